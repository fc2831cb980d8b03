"""Procedure 4 of docs/disaster-recovery.md, "the backup server lost", rehearsed
end to end with real parts: a backup server behind a real sshd on 127.0.0.1
with two machines (web1, db1) on append-only `setup-client` keys, an encrypted
mirror in a real S3 server (SeaweedFS); then the server's repositories and
keys are deleted. The commands `ketch runbook --only server` printed while the
machines were up are run as printed: the files web1 lost meanwhile come back
from the mirror, a new server is pulled, checked and verified, the machines
are let in again, and their next nightly runs go on: the history continues
from the pulled saves, little is sent, every repository passes git fsck, a
restore equals the source, and the mirror takes the new saves (and a push
without the key is refused rather than uploading them in the clear)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import RunKetch, RunResult
from tests.gitutil import git
from tests.jobs.rehearsal import ketch_on_path, keygen
from tests.offsite.conftest import S3Server, s3_env, s3_server, s3_url  # noqa: F401 - fixtures
from tests.remote.conftest import sshd  # noqa: F401 - a fixture
from tests.remote.test_remote import Machine, fsck, future_atimes
from tests.services.sshd import SshServer
from tests.test_restore import assert_same_tree, snapshot

MB = 1_000_000
# All an encrypted mirror shows in the bucket: hashed names and its name index.
_HIDDEN = re.compile(r"ketch/(?:[0-9a-f]{64}|ketch-keys)")

Tree = tuple[dict[bytes, dict[str, object]], set[frozenset[bytes]]]  # a snapshot()


@dataclass
class Host:
    """A client machine: its key, its config, and the sets' directories."""

    name: str
    machine: Machine
    config: Path
    sets: dict[str, Path]  # set name -> the one path it saves
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Scene:
    """The backup server's root and mirror, the machines, and what the operator
    kept away from the server: the mirror's key and the printed runbooks."""

    run_ketch: RunKetch
    server: SshServer
    tmp: Path
    srv: Path
    mirror: str  # s3://BUCKET/ketch
    key: Path
    hosts: list[Host]
    books: dict[str, str] = field(default_factory=dict)
    shell: dict[str, str] = field(default_factory=dict)  # the operator's environment

    def url(self, h: Host) -> str:
        return h.machine.url(self.srv / h.name)

    def heads(self, root: Path) -> dict[tuple[str, str], str]:
        """Each machine's sets' latest commits in the repositories under `root`."""
        return {(h.name, s): git(root / h.name, "rev-parse", f"refs/heads/{s}").decode().strip()
                for h in self.hosts for s in h.sets}


def _ok(proc: RunResult, what: str) -> str:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{err}"
    assert "Traceback" not in err, f"{what}\n{err}"
    return proc.stdout.decode(errors="replace")


def _web1_files(root: Path) -> dict[str, Path]:
    www, nginx = root / "srv" / "www", root / "etc" / "nginx"
    (www / "static").mkdir(parents=True)
    (www / "static" / "video.bin").write_bytes(os.urandom(3 * MB))
    (www / "index.html").write_text("<h1>web1</h1>\n")
    os.symlink("static/video.bin", www / "video")
    (www / "upload").mkdir()
    os.chmod(www / "upload", 0o1777)  # sticky and world-writable, as /tmp
    (www / "upload" / "by-www-data").write_bytes(b"x" * 1000)
    # An owner the machine has no name for: restored by number.
    os.chown(www / "upload" / "by-www-data", 12345, 54321)
    (www / "cgi").mkdir()
    (www / "cgi" / "run").write_text("#!/bin/sh\necho hi\n")
    os.chmod(www / "cgi" / "run", 0o4750)
    nginx.mkdir(parents=True)
    (nginx / "nginx.conf").write_text("worker_processes 2;\n")
    (nginx / "tls.key").write_bytes(os.urandom(256))
    os.chmod(nginx / "tls.key", 0o400)
    os.symlink("/nonexistent/dangling", nginx / "dangling")
    return {"www": www, "etc": nginx}


def _db1_files(root: Path) -> dict[str, Path]:
    data = root / "var" / "lib" / "db"
    data.mkdir(parents=True)
    (data / "base.dat").write_bytes(os.urandom(2 * MB))
    (data / "wal.log").write_bytes(os.urandom(100_000))
    os.chmod(data / "wal.log", 0o640)
    os.symlink("base.dat", data / "current")
    (data / "empty").write_bytes(b"")
    os.chmod(data, 0o2750)
    return {"data": data}


def _add_host(server: SshServer, run_ketch: RunKetch, tmp: Path, srv: Path, name: str) -> Host:
    """Machine `name`, added to the server as its admin would: setup-client with
    the machine's public key, the printed line in authorized_keys."""
    root = tmp / name
    root.mkdir()
    # The forced command decides what runs on the server: what the client asks is ignored.
    m = Machine(server, keygen(root / "id_ed25519"), remote_command="ignored")
    line = _ok(run_ketch("server", "setup-client", "--root", srv, "--user", "root", name,
                         f"{m.key}.pub"), f"setup-client {name}").strip()
    assert "--append-only" in line and f"--restrict-to {srv / name}" in line, line
    server.add_authorized_line(line)
    sets = (_web1_files if name == "web1" else _db1_files)(root)
    config = root / "ketch.toml"
    config.write_text(f'repository = "{m.url(srv / name)}"\n'
                      f'lock_file = "{root / "run.lock"}"\nlog_file = "{root / "ketch.log"}"\n'
                      + "".join(f'[[set]]\nname = "{s}"\npaths = ["{p}"]\n'
                                for s, p in sets.items()))
    config.chmod(0o600)
    # Its own ~/.cache: the server's idx files it keeps there outlive the server.
    return Host(name, m, config, sets, {**m.env, "HOME": str(root / "home")})


def _nightly(run_ketch: RunKetch, host: Host) -> dict[str, dict[str, object]]:
    """The machine's nightly run; its items by name."""
    for p in host.sets.values():
        future_atimes(p)  # so that reading them leaves the atimes the save recorded
    report = json.loads(_ok(run_ketch("run", "--config", host.config, "-q", "--json",
                                      env=host.env), f"ketch run on {host.name}"))
    assert report["exit_code"] == 0, report
    return {i["name"]: i for i in report["items"]}


def _commands(text: str, step: str) -> list[str]:
    """The commands of the runbook's step that says `step`, as printed."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("# ") and step in ln]
    assert starts, f"the runbook has no step {step!r}:\n{text}"
    out = []
    for ln in lines[starts[0] + 1:]:
        if not ln or ln.startswith("#"):
            break
        out.append(ln)
    assert out, f"no commands under {step!r}:\n{text}"
    return out


def _bash(lines: list[str], env: dict[str, str], what: str) -> RunResult:
    proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "\n".join(lines)], env=env,
                          capture_output=True, timeout=300)
    _ok(proc, f"{what}:\n" + "\n".join(lines))
    return proc


def _bucket_keys(s3: S3Server, bucket: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _pack_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))


def _operator_shell(tmp: Path) -> dict[str, str]:
    """A new login shell of the operator's: ketch on PATH and the bucket's
    credentials and endpoint (s3_env put them in os.environ); the mirror's key
    only where the printed lines export it."""
    env = ketch_on_path(tmp / "bin")
    env.pop("KETCH_ENCRYPT_KEY", None)
    return env


def _first_nights(sc: Scene) -> dict[tuple[str, str], Tree]:
    """Two nightly runs with a few changes between; each set as the second saved it."""
    web1, db1 = sc.hosts
    for h in sc.hosts:
        _nightly(sc.run_ketch, h)
    www = web1.sets["www"]
    (www / "index.html").write_text("<h1>web1, second edition</h1>\n")
    (www / "static" / "new.css").write_text("body { color: red }\n")
    os.chmod(web1.sets["etc"] / "nginx.conf", 0o600)
    (db1.sets["data"] / "wal.log").write_bytes(os.urandom(120_000))
    for h in sc.hosts:
        _nightly(sc.run_ketch, h)
    return {(h.name, s): snapshot(p) for h in sc.hosts for s, p in h.sets.items()}


def _disaster(sc: Scene) -> None:
    """The server's repositories gone, and with them its authorized_keys lines
    (sshd's file is shared with other tests: only ours go)."""
    shutil.rmtree(sc.srv)
    blobs = [Path(f"{h.machine.key}.pub").read_text().split()[1] for h in sc.hosts]
    keys = sc.server.authorized_keys
    kept = [ln for ln in keys.read_text().splitlines() if not any(b in ln for b in blobs)]
    keys.write_text("".join(ln + "\n" for ln in kept))
    web1 = sc.hosts[0]
    down = sc.run_ketch("run", "--config", web1.config, "-q", env=web1.env)
    assert down.returncode == 2 and b"Traceback" not in down.stderr, down.stderr.decode()


def _meanwhile(sc: Scene, saved: dict[tuple[str, str], Tree]) -> None:
    """web1 loses its web root while the server is down: back from the mirror."""
    web1 = sc.hosts[0]
    meanwhile = _commands(sc.books["web1"], "Meanwhile")
    # Without the key nothing in the bucket can be read: --mirror-key names its copy.
    assert meanwhile[0] == f"export KETCH_ENCRYPT_KEY={sc.key}", meanwhile
    assert meanwhile[1].startswith(f"ketch ls -r {sc.mirror}/web1 www"), meanwhile
    www = web1.sets["www"]
    shutil.rmtree(www)
    listed = _bash(meanwhile, {**sc.shell, "HOME": web1.env["HOME"]},
                   "meanwhile, on web1").stdout.decode()
    assert listed.count("\n") == 3, listed  # two saves and latest
    assert snapshot(www) == saved[("web1", "www")]


def _new_server(sc: Scene, latest: dict[tuple[str, str], str]) -> dict[str, int]:
    """Pulled, checked and verified, then each machine let in again with the key
    it still has; the pulled repositories' pack bytes. Each step in a shell of
    its own on the new server: the Meanwhile step's export was on a machine."""
    rebuild = _commands(sc.books["web1"], "A new server")
    assert [c.split()[:3] for c in rebuild if not c.startswith("export ")] == [
        ["ketch", "mirror", "pull"], ["ketch", "fsck", "--all"],
        ["ketch", "mirror", "verify"]], rebuild
    _bash(rebuild, sc.shell, "the new server")
    assert sc.heads(sc.srv) == latest
    pulled = {h.name: _pack_bytes(sc.srv / h.name) for h in sc.hosts}
    for h in sc.hosts:
        [line] = _commands(sc.books[h.name], "Let the machines in again")
        assert line.endswith(f" {h.name} /path/to/{h.name}.pub"), line
        got = _bash([line.replace(f"/path/to/{h.name}.pub", f"{h.machine.key}.pub")],
                    sc.shell, f"setup-client {h.name} on the new server")
        assert b"Using existing repository" in got.stderr, got.stderr
        authorized = got.stdout.decode().strip()
        assert "--append-only" in authorized, authorized
        assert f"--restrict-to {sc.srv / h.name}" in authorized, authorized
        sc.server.add_authorized_line(authorized)
    # setup-client took the pulled repositories as they were.
    assert sc.heads(sc.srv) == latest
    assert {h.name: _pack_bytes(sc.srv / h.name) for h in sc.hosts} == pulled
    return pulled


def _next_night(sc: Scene, latest: dict[tuple[str, str], str], pulled: dict[str, int]) -> None:
    """The machines' next nightly runs, unchanged, against the new server."""
    web1, db1 = sc.hosts
    (web1.sets["www"] / "index.html").write_text("<h1>web1, the server is back</h1>\n")
    (db1.sets["data"] / "wal.log").write_bytes(os.urandom(50_000))
    for h in sc.hosts:
        items = _nightly(sc.run_ketch, h)
        data = sum(p.stat().st_size for d in h.sets.values() for p in d.rglob("*")
                   if p.is_file() and not p.is_symlink())
        sent = sum(int(str(i["bytes_new"])) for i in items.values())
        grown = _pack_bytes(sc.srv / h.name) - pulled[h.name]
        # Deduplicated against the pulled packs: the multi-MB files are not sent again.
        assert sent < 0.1 * data and grown < 0.1 * data, (h.name, sent, grown, data)
        for s, path in h.sets.items():
            parent = git(sc.srv / h.name, "rev-parse", f"refs/heads/{s}^").decode().strip()
            assert parent == latest[(h.name, s)], (h.name, s)
            ls = _ok(sc.run_ketch("ls", "-r", sc.url(h), s, env=h.env), f"ls {h.name} {s}")
            assert ls.count("\n") == 4, ls  # three saves and latest
            out = sc.tmp / "restored" / h.name / s
            _ok(sc.run_ketch("restore", "-r", sc.url(h), "-C", out, f"{s}/latest{path}",
                             env=h.env), f"restore {h.name} {s}")
            assert_same_tree(path, out / path.name)
        fsck(sc.srv / h.name)


def _push_again(sc: Scene, s3: S3Server) -> None:
    """The mirror takes the new saves, encrypted."""
    bucket = sc.mirror.removeprefix("s3://").split("/")[0]
    before = _bucket_keys(s3, bucket)
    assert all(_HIDDEN.fullmatch(k) for k in before), before
    # The new server's push job before anyone gave it the key (it was on the old
    # server): refused, rather than uploading the repositories in the clear
    # beside the encrypted mirror, where no reader with the key would see them.
    blind = sc.run_ketch("mirror", "push", "--all", sc.srv, sc.mirror)
    assert blind.returncode == 2, blind.stdout.decode() + blind.stderr.decode()
    assert b"encrypted" in blind.stderr and b"Traceback" not in blind.stderr, blind.stderr
    assert _bucket_keys(s3, bucket) == before
    _bash(_commands(sc.books["web1"], "Push again"), sc.shell, "push again")
    verified = _ok(sc.run_ketch("mirror", "verify", sc.mirror, "--root", sc.srv,
                                "--encrypt-key", sc.key), "mirror verify")
    assert "2 of 2 repositories intact" in verified, verified
    assert all(_HIDDEN.fullmatch(k) for k in _bucket_keys(s3, bucket))
    # What a third server would get: the saves of the night after the rebuild.
    third = sc.tmp / "third"
    _ok(sc.run_ketch("mirror", "pull", sc.mirror, third, "--encrypt-key", sc.key), "pull")
    assert sc.heads(third) == sc.heads(sc.srv)
    for h in sc.hosts:
        fsck(sc.srv / h.name)


def test_the_server_lost_procedure_brings_the_machines_back(
        sshd: SshServer, s3_env: S3Server, s3_url: str,  # noqa: F811
        run_ketch: RunKetch, tmp_path: Path) -> None:
    began = time.monotonic()
    srv = tmp_path / "srv"
    hosts = [_add_host(sshd, run_ketch, tmp_path, srv, n) for n in ("web1", "db1")]
    safe = tmp_path / "password-safe"  # the key's copy, away from the server and the bucket
    safe.mkdir()
    sc = Scene(run_ketch, sshd, tmp_path, srv, f"{s3_url}/ketch", safe / "mirror.key", hosts)
    saved = _first_nights(sc)
    latest = sc.heads(srv)

    _ok(run_ketch("mirror", "keygen", sc.key), "mirror keygen")
    _ok(run_ketch("mirror", "push", "--all", srv, sc.mirror, "--encrypt-key", sc.key),
        "mirror push")
    # Printed while the machines were up, and kept away from the server.
    sc.books = {h.name: _ok(run_ketch("runbook", "--only", "server", "--mirror", sc.mirror,
                                      "--mirror-key", sc.key, "-c", h.config,
                                      "--machine", h.name, "--server-root", srv, env=h.env),
                            f"runbook {h.name}")
                for h in hosts}

    _disaster(sc)
    sc.shell = _operator_shell(tmp_path)
    _meanwhile(sc, saved)
    pulled = _new_server(sc, latest)
    _next_night(sc, latest, pulled)
    _push_again(sc, s3_env)
    print(f"rehearsed in {time.monotonic() - began:.1f} s")
