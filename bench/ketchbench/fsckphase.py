"""The ``fsck`` phase: checking a repository of DATA end to end, ketch beside
reading its packs once (``cat``, warm and, as root, cold cache), ``bup fsck``,
``restic check --read-data`` and ``borg check --verify-data`` on their own
repositories of the same DATA (saved untimed first). ketch runs ``fsck
--read-data`` (every object inflated and hashed), plain ``fsck`` (CRC32 of
every entry, every pack's SHA-1, the walk from the refs) and ``fsck --quick``.
Targets (issue 12): ``--read-data`` at ≥ 0.8× ``cat``'s MB/s, peak RSS ≤ 150
MB, ``--quick`` ≤ 2 s."""

from __future__ import annotations

from pathlib import Path

from ketchbench.common import MB, Context, Row, drop_caches, log, measure, repo_bytes, run_ok
from ketchbench.peers import Peer, make_peers

FSCK = "fsck"


def _row(tool: str, item: str, nbytes: int, cmd: list[str], env: dict[str, str],
         repo: Path) -> Row:
    m = measure(cmd, env)
    ok = m.returncode == 0
    note = "" if ok else (m.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
    log(f"{tool} {item}: {m.seconds:.2f} s, {nbytes / MB / m.seconds:,.0f} MB/s")
    return Row(phase=FSCK, tool=tool, item=item, bytes_in=nbytes, seconds=round(m.seconds, 3),
               mb_per_s=round(nbytes / MB / m.seconds, 2), max_rss_kib=m.max_rss_kib,
               repo_bytes=repo_bytes(repo), tree=None, ok=ok, note=note,
               cpu_seconds=m.cpu_seconds, tree_pss_kib=m.tree_pss_kib)


def _checks(peer: Peer, repo: Path) -> list[tuple[str, list[str]]]:
    argv = list(peer.argv)
    if peer.name == "ketch":
        return [(f"{FSCK} --read-data", [*argv, "-d", str(repo), "fsck", "--read-data", "-q"]),
                (FSCK, [*argv, "-d", str(repo), "fsck", "-q"]),
                (f"{FSCK} --quick", [*argv, "-d", str(repo), "fsck", "--quick", "-q"])]
    if peer.name == "bup":
        return [("bup fsck", [*argv, "-d", str(repo), "fsck"])]
    if peer.name == "restic":
        return [("check --read-data", [*argv, "-r", str(repo), "--quiet", "check",
                                       "--read-data"])]
    return [("check --verify-data", [*argv, "check", "--verify-data", str(repo)])]


def phase_fsck(ctx: Context) -> list[Row]:
    data = ctx.corpus.data_dir
    home = ctx.work_dir / "fsck-home"
    peers, missing = make_peers(ctx.tools, ctx.peers, ctx.env, home)
    for why in missing:
        log(f"fsck: {why}")
    rows: list[Row] = []
    for peer in peers:
        repo = ctx.work_dir / f"fsck-{peer.name}"
        run_ok(["rm", "-rf", str(repo)], ctx.env)
        ctx.repos.append(repo)
        peer.init(repo)
        log(f"fsck: saving DATA with {peer.name} (not timed)")
        for _, cmd in peer.save(repo, data, 1):
            run_ok(cmd, peer.env)
        size = repo_bytes(repo)
        if peer.name == "ketch":
            packs = sorted(str(p) for p in (repo / "objects" / "pack").glob("*.pack"))
            nbytes = sum(Path(p).stat().st_size for p in packs)
            cat = ["sh", "-c", 'cat "$@" > /dev/null', "cat", *packs]
            if drop_caches():
                rows.append(_row("cat", "cat packs (cold)", nbytes, cat, ctx.env, repo))
            rows.append(_row("cat", "cat packs (warm)", nbytes, cat, ctx.env, repo))
        else:
            nbytes = size
        for item, cmd in _checks(peer, repo):
            rows.append(_row(peer.name, item, nbytes, cmd, peer.env, repo))
        if peer.name == "ketch" and drop_caches():
            rows.append(_row("ketch", f"{FSCK} --read-data (cold)", nbytes,
                             _checks(peer, repo)[0][1], peer.env, repo))
    return rows
