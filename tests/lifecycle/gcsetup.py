"""Repositories for the gc tests: a changing corpus saved day by day, a prune
done with refs alone (a branch's chain rewritten to keep some saves, as
`ketch prune` does), and the checks a user would make afterwards."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

from ketch.git import objects as gobj
from ketch.localrepo import LocalRepository
from tests.conftest import RunBup, RunKetch

DAY = 86400
T0 = 1_700_000_000


def _rnd(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _put(path: Path, data: bytes, mtime: int) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def corpus(root: Path, day: int, scale: int = 1) -> None:
    """The data of `day`: stable files, a file per recent day, an edited file, a log."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "stable").mkdir(parents=True)
    (root / "daily").mkdir()
    for i in range(4):
        _put(root / "stable" / f"s{i}", _rnd(1000 + i, 100_000 * scale), T0)
    for d in range(max(0, day - 2), day + 1):
        _put(root / "daily" / f"d{d}", _rnd(d, 150_000 * scale), T0 + d * DAY)
    big = bytearray(_rnd(7, 400_000 * scale))
    at = (day * 37_000) % (len(big) - 20_000)
    big[at : at + 20_000] = _rnd(10_000 + day, 20_000)
    _put(root / "edited", bytes(big), T0 + day * DAY)
    log = "".join(f"day {d} line {i}\n" for d in range(day + 1) for i in range(100))
    _put(root / "log.txt", log.encode(), T0 + day * DAY)


def save_day(run_ketch: RunKetch, repo: Path, data: Path, day: int, name: str = "m",
             scale: int = 1) -> None:
    corpus(data, day, scale)
    run_ketch("save", "-q", "-d", repo, "-n", name, "--strip", "--date", T0 + day * DAY, data,
              check=True)


def saved_repo(run_ketch: RunKetch, tmp: Path, days: list[int], name: str = "m",
               scale: int = 1) -> Path:
    repo = tmp / "repo"
    run_ketch("init", "-d", repo, check=True)
    for d in days:
        save_day(run_ketch, repo, tmp / "data", d, name, scale)
    return repo


def commit_day(raw: bytes) -> int:
    c = gobj.decode_commit(raw)
    return (c.author_time - T0) // DAY


def prune(repo: Path, keep_days: set[int], branch: str = "m") -> None:
    """Rewrite the branch to keep only the saves of `keep_days` (trees, dates and
    messages as they were), as a prune does; then move it by compare-and-swap."""
    ref = f"refs/heads/{branch}".encode()
    with LocalRepository(str(repo)) as r:
        head = r.read_ref(ref)
        assert head is not None
        chain = []
        oid: bytes | None = head
        while oid is not None:
            raw = r.read_typed(oid, gobj.COMMIT)
            chain.append(raw)
            parents = gobj.decode_commit(raw).parents
            oid = parents[0] if parents else None
        w = r.writer()
        parent: bytes | None = None
        for raw in reversed(chain):
            if commit_day(raw) not in keep_days:
                continue
            headers, _, message = raw.partition(b"\n\n")
            lines = [ln for ln in headers.split(b"\n") if not ln.startswith(b"parent ")]
            if parent is not None:
                lines.insert(1, b"parent " + parent.hex().encode())
            parent = w.write(gobj.COMMIT, b"\n".join(lines) + b"\n\n" + message)
        w.close()
        assert parent is not None
        r.update_ref(ref, parent, head, b"prune (test)")


def repo_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "objects").rglob("*") if p.is_file())


def fsck(repo: Path) -> None:
    p = subprocess.run(["git", "--git-dir", os.fspath(repo), "fsck", "--strict"],
                       capture_output=True)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode == 0, out
    assert "error" not in out and "missing" not in out and "broken" not in out, out


def ketch_here(*args: object) -> bytes:
    """Run the CLI in this process, its stdout (a subprocess costs ~0.5 s of
    imports, and the concurrency tests check restores dozens of times)."""
    from click.testing import CliRunner

    from ketch.cli.main import cli

    r = CliRunner().invoke(cli, [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike))
                                 else str(a) for a in args], standalone_mode=False)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    code = r.return_value if isinstance(r.return_value, int) else r.exit_code
    assert code == 0, (args, code, r.stderr_bytes.decode(errors="replace"))
    return r.stdout_bytes


def saves(run_ketch: RunKetch, repo: Path, branch: str = "m") -> list[tuple[str, int]]:
    """(save name, day) of every save on the branch, oldest first."""
    import json

    listing = ketch_here("ls", "-d", repo, "--json", branch)
    out = []
    with LocalRepository(str(repo)) as r:
        for row in json.loads(listing):
            if row["type"] == "save":
                raw = r.read_typed(bytes.fromhex(row["commit"]), gobj.COMMIT)
                out.append((row["name"], commit_day(raw)))
    return out


def tree_of(root: Path) -> dict[str, bytes]:
    return {os.fspath(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_restores(run_ketch: RunKetch, repo: Path, tmp: Path, days: list[int],
                   branch: str = "m", bup: RunBup | None = None, scale: int = 1) -> None:
    """Every save of `days` is on the branch and restores byte-identical (with
    ketch, and with real bup when given)."""
    found = saves(run_ketch, repo, branch)
    assert sorted(d for _, d in found) == sorted(days), found
    want_dir = tmp / "want"
    for name, day in found:
        corpus(want_dir, day, scale)
        want = tree_of(want_dir)
        out = tmp / f"out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        ketch_here("restore", "-q", "-d", repo, "-C", out, f"{branch}/{name}/")
        assert tree_of(out) == want, f"ketch restore of {name} differs"
        if bup is not None:
            bout = tmp / f"bup-{name}"
            shutil.rmtree(bout, ignore_errors=True)
            bup(repo, "restore", "-q", "-C", bout, f"/{branch}/{name}/")
            assert tree_of(bout) == want, f"bup restore of {name} differs"
        shutil.rmtree(out, ignore_errors=True)
