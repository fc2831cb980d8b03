"""The remote phase: the clients against their servers over a loopback sshd."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from corpus import mutate_day

from ketchbench.common import BRANCH, ROOT, Context, Row, Tool, log, repo_bytes
from ketchbench.cycle import (
    CycleState,
    copy_data,
    cycle_row,
    restore_step,
    run_steps,
    save_step,
    warm,
)

if TYPE_CHECKING:  # imported for real by _start_sshd, once ROOT is on sys.path
    from tests.services.sshd import SshServer

REMOTE = "remote"  # the phase, and its rows' prefix: remote:save-initial, ...
def _start_sshd(ctx: Context) -> SshServer | None:
    """The private sshd of tests/services/sshd.py in the work dir; None (and
    a message saying why) when it cannot run here."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from tests.services.sshd import SshServer, missing_binaries
    except ImportError as e:
        log(f"{REMOTE}: skipped: cannot import tests.services.sshd ({e})")
        return None
    missing = missing_binaries()
    if missing:
        log(f"{REMOTE}: skipped: OpenSSH is not installed (missing {', '.join(missing)}; "
            "`make deps` installs openssh-server)")
        return None
    workdir = ctx.work_dir / "sshd"
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        # The forced commands name the server by absolute path; PYTHONPATH
        # serves the `python -m ketch` fallback, as tool_env() does locally.
        server = SshServer.start(workdir, env={"PYTHONPATH": str(ROOT / "src")})
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
        log(f"{REMOTE}: skipped: the private sshd did not start: {e}")
        return None
    ctx.repos.append(workdir)
    log(f"sshd on {server.host}:{server.port} (log {server.log_path})")
    return server


def _remote_env(
    ctx: Context, sshd: SshServer, tool: Tool, cache: Path
) -> tuple[dict[str, str], Path]:
    """``tool``'s client environment: a key that may only run ``tool``'s
    server, and on PATH an ``ssh`` that logs in with it and logs (``-v -E``)
    to the returned file, for the bytes on the wire."""
    server = shlex.join([*tool.argv, "server"])
    key = sshd.new_key(f"bench-{tool.name}", forced_command=server)
    wrapper = sshd.workdir / f"ssh-v-{tool.name}"
    wrapper.mkdir()
    ssh_log = sshd.workdir / f"ssh-{tool.name}.log"
    inner = sshd.wrapper_dir(key) / "ssh"
    script = wrapper / "ssh"
    argv = shlex.join([str(inner), "-v", "-E", str(ssh_log)])
    script.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
    script.chmod(0o755)
    env = {k: v for k, v in ctx.env.items() if k != "KETCH_RSH"}  # plain ssh from PATH
    env.update(
        PATH=f"{wrapper}{os.pathsep}{env.get('PATH', os.defpath)}",
        KETCH_REMOTE_COMMAND=server,  # what the key forces anyway
        XDG_CACHE_HOME=str(cache),  # ketch's client: idx cache and index, fresh
    )
    return env, ssh_log


def _remote_states(ctx: Context, sshd: SshServer) -> list[CycleState]:
    """ketch locally and ketch's client against ``ketch server``; bup's
    client (its own BUP_DIR) against ``bup server``. Fresh repositories."""
    cache = ctx.work_dir / "remote-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir()
    ctx.repos.append(cache)
    states = []
    for tool in ctx.tools:
        env, ssh_log = _remote_env(ctx, sshd, tool, cache)
        client = None
        if tool.name == "ketch":
            local = ctx.fresh_repo(tool, "remote-local")
            states.append(CycleState(tool, local, repo_bytes(local)))
        else:
            client = ctx.fresh_repo(tool, "remote-client")
        srv = ctx.fresh_repo(tool, "remote-server")
        states.append(
            CycleState(tool, srv, repo_bytes(srv), label=f"{tool.name} -r", env=env,
                       url=sshd.remote_url(srv), client_dir=client, ssh_log=ssh_log)
        )
    return states


def _largest_dir(root: Path) -> Path:
    """The directory under ``root`` with the most entries (the first in
    sorted walk order on a tie)."""
    best, most = root, -1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if len(dirnames) + len(filenames) > most:
            best, most = Path(dirpath), len(dirnames) + len(filenames)
    return best


def ls_rows(ctx: Context, states: list[CycleState], data: Path) -> list[Row]:
    """``ls -l bench/latest/DIR`` of DATA's largest directory from each state;
    every listing must equal the first (local) one."""
    target = _largest_dir(data)
    item = f"{target.name}/"  # the whole path goes to the JSON's "remote"
    ref = f"{BRANCH}/latest{target}"
    rows: list[Row] = []
    listings: list[bytes] = []
    for st in states:
        log(f"{st.name} ls -l {ref}")
        m, parts, note, wire = run_steps(ctx, st, [("ls", st.cmd("ls", "-l", ref))])
        row = cycle_row(f"{REMOTE}:ls", st, 0, m, parts, note)
        row.item, row.wire_bytes = item, wire
        if row.ok and listings and m.stdout != listings[0]:
            row.ok, row.note = False, f"listing differs from {states[0].name}'s"
        rows.append(row)
        listings.append(m.stdout)
    info = ctx.info[REMOTE]
    assert isinstance(info, dict)
    info["ls"] = {"dir": str(target.relative_to(data)), "lines": listings[0].count(b"\n")}
    return rows


def check_save_trees(rows: list[Row]) -> None:
    """``ketch -r``'s save should have the same root tree (save --json) as
    ketch's local save of the same state. The root also holds the metadata of
    DATA's ancestors (/var/tmp...), which others may touch between the two
    saves: a failure only if DATA's own trees differ too (check_trees)."""
    local = {r.phase: r for r in rows if r.tool == "ketch"}
    for r in rows:
        want = local.get(r.phase)
        if r.tool != "ketch -r" or want is None or not want.save_tree:
            continue
        if r.save_tree != want.save_tree:
            why = "" if r.tree != want.tree else " (above DATA only)"
            r.note = (r.note + "; " if r.note else "") + (
                f"save tree {str(r.save_tree)[:12]} != local {want.save_tree[:12]}{why}"
            )


def phase_remote(ctx: Context) -> list[Row]:
    """The cycle's steps on a copy of DATA through a private sshd: each save
    step by ketch locally, ketch's client and bup's client on the same state
    of DATA, then ketch's restore and ls, locally and remotely."""
    sshd = _start_sshd(ctx)
    if sshd is None:
        return []
    ctx.info[REMOTE] = {
        "how": "ketch -r, bup -r: the client against its server through a private sshd "
        "on 127.0.0.1, both on this machine; traffic: ketch's own count (save --json "
        "bytes_sent + bytes_received); wire_bytes: ssh -v's Transferred (both ways)",
        "sshd": f"127.0.0.1:{sshd.port}",
    }
    with sshd:
        data = ctx.work_dir / "remote-data"  # not the cycle's copy
        log(f"copying {ctx.corpus.data_dir} to {data}")
        copy_data(ctx.corpus.data_dir, data)
        ctx.repos.append(data)
        data_bytes = warm(data)
        states = _remote_states(ctx, sshd)
        rows: list[Row] = []
        for step in ("save-initial", "resave"):
            rows += [save_step(ctx, f"{REMOTE}:{step}", st, data, data_bytes) for st in states]
        log(f"applying the day's changes to {data}")
        day = mutate_day(data, ctx.scale)
        ctx.info.setdefault("day", day.as_dict())
        data_bytes = warm(data)
        for st in states:
            row = save_step(ctx, f"{REMOTE}:save-day", st, data, data_bytes)
            row.changed_bytes = day.changed_bytes
            rows.append(row)
        ketch = [st for st in states if st.tool.name == "ketch"]
        rows += [restore_step(ctx, st, data, data_bytes, f"{REMOTE}:restore") for st in ketch]
        if ketch:
            rows += ls_rows(ctx, ketch, data)
        check_save_trees(rows)
    return rows
