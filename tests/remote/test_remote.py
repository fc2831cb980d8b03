"""The backup server over a real sshd on 127.0.0.1: ketch and bup clients,
ketch and bup servers, confinement, interrupted and concurrent saves."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import RunBup, RunKetch
from tests.gitutil import git
from tests.services.sshd import SshServer
from tests.test_restore import assert_same_tree, build_tree

KETCH_SERVER = shlex.join([sys.executable, "-m", "ketch", "server"])


def fsck(repo: Path) -> None:
    git(repo, "fsck", "--strict", "--no-dangling")


def gits(repo: Path, *args: str) -> str:
    return git(repo, *args).decode()


class Machine:
    """A client machine: its ssh key (through a PATH wrapper) and ketch's env."""

    def __init__(self, sshd: SshServer, key: Path, *,
                 remote_command: str = KETCH_SERVER) -> None:
        self.sshd = sshd
        self.key = key
        self.env = {
            "PATH": sshd.path_with_wrapper(key),
            "KETCH_REMOTE_COMMAND": remote_command,
        }

    @classmethod
    def new(cls, sshd: SshServer, name: str, *, forced: str | None = None,
            remote_command: str = KETCH_SERVER) -> Machine:
        """A machine with a new key in the server's authorized_keys."""
        return cls(sshd, sshd.new_key(name, forced_command=forced),
                   remote_command=remote_command)

    def url(self, path: Path | str) -> str:
        return self.sshd.remote_url(path)


def build_small_tree(root: Path, seed: int = 0) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello %d\n" % seed)
    (root / "sub" / "big").write_bytes(os.urandom(2_000_000))
    os.symlink("a.txt", root / "link")
    future_atimes(root)


def future_atimes(root: Path) -> None:
    """relatime bumps an atime older than the mtime on the first read; one an
    hour ahead survives the saves and comparisons (as in the torture tree)."""
    atime = time.time_ns() + 3600 * 10**9
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.utime(p, ns=(atime, p.stat().st_mtime_ns))


# -- round trips ------------------------------------------------------------------


def test_torture_tree_round_trip_over_ssh(sshd: SshServer, run_ketch: RunKetch,
                                          tmp_path: Path) -> None:
    m = Machine.new(sshd, "torture")
    tree = tmp_path / "tree"
    build_tree(tree)
    repo = tmp_path / "server" / "repo"
    url = m.url(repo)
    run_ketch("init", "-r", url, env=m.env, check=True)
    save = run_ketch("save", "-r", url, "-n", "t", "--json", tree, env=m.env, check=True)
    first = json.loads(save.stdout)
    listing = run_ketch("ls", "-r", url, "-l", f"t/latest{tree}", env=m.env, check=True)
    assert b"big.bin" in listing.stdout and b"dirlink -> a/b" in listing.stdout
    out = tmp_path / "out"
    run_ketch("restore", "-r", url, "-C", out, f"t/latest{tree}", env=m.env, check=True)
    assert_same_tree(tree, out / "tree")
    fsck(repo)
    # Nothing changed: the re-save sends (almost) nothing.
    again = run_ketch("save", "-r", url, "-n", "t", "--json", tree, env=m.env, check=True)
    second = json.loads(again.stdout)
    assert second["bytes_new"] < 0.01 * first["bytes_new"], (first, second)
    log = gits(repo, "rev-list", "refs/heads/t").split()
    assert len(log) == 2
    fsck(repo)


def test_bup_client_against_ketch_server(sshd: SshServer, bup: RunBup, run_ketch: RunKetch,
                                         tmp_path: Path) -> None:
    m = Machine.new(sshd, "bupclient", forced=KETCH_SERVER)
    tree = tmp_path / "tree"
    build_small_tree(tree)
    repo = tmp_path / "srv"
    run_ketch("init", "-d", repo, check=True)
    client = tmp_path / "bupdir"
    env = {**os.environ, "PATH": m.env["PATH"], "BUP_DIR": str(client)}
    url = m.url(repo)

    def bupc(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(["bup", *map(str, args)], env=env, capture_output=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        return proc

    bupc("init")
    bupc("index", tree)
    bupc("save", "-r", url, "-n", "fromBup", tree)
    bupc("save", "-r", url, "-n", "fromBup", tree)
    ls = bupc("ls", "-r", url, "-l", f"fromBup/latest{tree}").stdout
    assert b"a.txt" in ls and b"link -> a.txt" in ls
    bupc("restore", "-r", url, "-C", tmp_path / "out", f"fromBup/latest{tree}")
    assert_same_tree(tree, tmp_path / "out" / "tree")
    fsck(repo)
    # ketch reads what bup wrote through ketch's server
    proc = run_ketch("ls", "-d", repo, "fromBup")
    assert proc.stdout.count(b"\n") == 3, proc.stdout  # two saves and latest


def test_ketch_client_against_bup_server(sshd: SshServer, bup: RunBup, run_ketch: RunKetch,
                                         tmp_path: Path) -> None:
    m = Machine.new(sshd, "bupserver", remote_command="bup server")
    tree = tmp_path / "tree"
    build_small_tree(tree)
    repo = tmp_path / "bupsrv"
    bup(repo, "init")
    url = m.url(repo)
    run_ketch("save", "-r", url, "-n", "fromKetch", tree, env=m.env, check=True)
    (tree / "a.txt").write_bytes(b"changed\n")
    future_atimes(tree)
    run_ketch("save", "-r", url, "-n", "fromKetch", tree, env=m.env, check=True)
    out = tmp_path / "out"
    run_ketch("restore", "-r", url, "-C", out, f"fromKetch/latest{tree}", env=m.env, check=True)
    assert_same_tree(tree, out / "tree")
    fsck(repo)
    ls = bup(repo, "ls", "-l", f"fromKetch/latest{tree}").stdout
    assert b"a.txt" in ls
    bup(repo, "restore", "-C", tmp_path / "bout", f"fromKetch/latest{tree}")
    assert_same_tree(tree, tmp_path / "bout" / "tree")


# -- confinement ------------------------------------------------------------------


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    return path


@pytest.fixture
def confined(sshd: SshServer, run_ketch: RunKetch, tmp_path: Path) -> tuple[Machine, Path]:
    """Machine `web`, set up with `ketch server setup-client` (an append-only key),
    next to machine `db` on the same server."""
    root = tmp_path / "repos"
    keys = tmp_path / "keys"
    keys.mkdir()
    # The forced command decides what runs: what the client asks for is ignored.
    m = Machine(sshd, _keygen(keys / "web"), remote_command="ignored")
    proc = run_ketch("server", "setup-client", "--root", root, "--user", "root", "web",
                     f"{m.key}.pub", check=True)
    line = proc.stdout.decode().strip()
    assert line.startswith('command="') and "--restrict-to" in line and "--append-only" in line
    sshd.add_authorized_line(line)
    db = run_ketch("server", "setup-client", "--root", root, "--user", "root", "db",
                   f"{_keygen(keys / 'db')}.pub", check=True)
    sshd.add_authorized_line(db.stdout.decode().strip())
    return m, root


def test_confined_key_reaches_only_its_repository(confined: tuple[Machine, Path],
                                                  run_ketch: RunKetch, tmp_path: Path) -> None:
    m, root = confined
    tree = tmp_path / "tree"
    build_small_tree(tree)
    # Its own repository, by its path or by the server's default for the key.
    run_ketch("save", "-r", m.url(root / "web"), "-n", "n", tree, env=m.env, check=True)
    host = f"ssh://{m.sshd.host}:{m.sshd.port}"
    ok = run_ketch("ls", "-r", f"{m.sshd.host}:", "n", env={
        **m.env, "KETCH_RSH": shlex.join(m.sshd.ssh_argv(m.key))})
    assert ok.returncode == 0 and ok.stdout.count(b"\n") == 2, ok.stderr
    os.symlink(root / "db", root / "web" / "escape")
    attacks = [
        (f"{host}{root / 'db'}", "outside"),
        (f"{host}{root / 'web'}/../db", "'..'"),
        (f"{host}{root / 'web' / 'escape'}", "outside"),
        (f"{host}/etc", "outside"),
    ]
    for url, why in attacks:
        proc = run_ketch("ls", "-r", url, env=m.env)
        err = proc.stderr.decode()
        assert proc.returncode == 2, (url, err)
        assert why in err and "Traceback" not in err, (url, err)
        assert err.count("\n") <= 2, err
    proc = run_ketch("init", "-r", f"{host}{root / 'evil'}", env=m.env)
    assert proc.returncode == 2 and not (root / "evil").exists()
    assert gits(root / "db", "for-each-ref") == ""
    fsck(root / "web")


def _raw_session(m: Machine, requests: bytes) -> bytes:
    proc = subprocess.run([*m.sshd.ssh_argv(m.key), m.sshd.host, "ketch server"],
                          input=requests, capture_output=True, timeout=60)
    return proc.stdout


def test_append_only_key_cannot_rewind_or_delete(confined: tuple[Machine, Path],
                                                 run_ketch: RunKetch, tmp_path: Path) -> None:
    m, root = confined
    tree = tmp_path / "tree"
    build_small_tree(tree)
    url = m.url(root / "web")
    run_ketch("save", "-r", url, "-n", "n", tree, env=m.env, check=True)
    (tree / "a.txt").write_bytes(b"second\n")
    run_ketch("save", "-r", url, "-n", "n", tree, env=m.env, check=True)
    repo = root / "web"
    new, old = gits(repo, "rev-list", "refs/heads/n").split()
    rewind = f"update-ref refs/heads/n\n{old}\n{new}\n".encode()
    delete = f"update-ref refs/heads/n\n{'0' * 40}\n{new}\n".encode()
    other = f"update-ref refs/heads/other\n{old}\n\n".encode()
    reply = _raw_session(m, rewind + delete + other + b"quit\n")
    assert reply.count(b"\nerror ") == 2, reply
    assert b"append-only" in reply and b"deleting refs" in reply
    assert gits(repo, "rev-parse", "refs/heads/n").strip() == new
    # Adding a new branch is fine.
    assert gits(repo, "rev-parse", "refs/heads/other").strip() == old
    fsck(repo)


# -- faults and concurrency --------------------------------------------------------------


def _pack_bytes(repo: Path) -> int:
    d = repo / "objects" / "pack"
    return sum(p.stat().st_size for p in d.glob("*.pack"))


def test_killed_save_resumes_without_resending(sshd: SshServer, run_ketch: RunKetch,
                                               tmp_path: Path) -> None:
    m = Machine.new(sshd, "killed")
    tree = tmp_path / "tree"
    tree.mkdir()
    total = 0
    for i in range(40):
        data = os.urandom(1_000_000)
        (tree / f"f{i:02d}").write_bytes(data)
        total += len(data)
    repo = tmp_path / "srv"
    run_ketch("init", "-d", repo, check=True)
    url = m.url(repo)
    env = {**os.environ, **m.env, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "ketch", "save", "-r", url, "-n", "k",
                             "--compress", "9", tree], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    tmp_packs: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        tmp_packs = list((repo / "objects").glob("pack-tmp-*/pack"))
        if tmp_packs and tmp_packs[0].stat().st_size > total // 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the save finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The server notices the end of the stream and keeps the complete objects.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and list((repo / "objects").glob("pack-tmp-*")):
        time.sleep(0.05)
    assert not list((repo / "objects").glob("pack-tmp-*"))
    assert gits(repo, "for-each-ref") == ""
    fsck(repo)
    arrived = _pack_bytes(repo)
    assert arrived > total // 5
    res = run_ketch("save", "-r", url, "-n", "k", "--json", tree, env=m.env, check=True)
    sent = json.loads(res.stdout)["bytes_new"]
    assert sent < total - arrived * 0.9, (sent, total, arrived)
    out = tmp_path / "out"
    run_ketch("restore", "-r", url, "-C", out, f"k/latest{tree}", env=m.env, check=True)
    assert_same_tree(tree, out / "tree")
    fsck(repo)


def test_concurrent_saves(sshd: SshServer, run_ketch: RunKetch, tmp_path: Path) -> None:
    """Four machines into their own repositories and two into one branch, all at once."""
    m = Machine.new(sshd, "concurrent")
    env = {**os.environ, **m.env, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    jobs = []
    shared = tmp_path / "shared"
    run_ketch("init", "-d", shared, check=True)
    for i in range(6):
        tree = tmp_path / f"tree{i}"
        build_small_tree(tree, seed=i)
        repo = shared if i >= 4 else tmp_path / f"repo{i}"
        if i < 4:
            run_ketch("init", "-d", repo, check=True)
        jobs.append((repo, tree, subprocess.Popen(
            [sys.executable, "-m", "ketch", "save", "-r", m.url(repo), "-n", "m", "-q", tree],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    for _, _, p in jobs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    for repo, tree, _ in jobs[:4]:
        fsck(repo)
        out = tmp_path / f"out-{repo.name}"
        run_ketch("restore", "-d", repo, "-C", out, f"m/latest{tree}", check=True)
        assert_same_tree(tree, out / tree.name)
    fsck(shared)
    commits = gits(shared, "rev-list", "refs/heads/m").split()
    assert len(commits) == 2  # neither save into the shared branch was lost
    saved = {name for c in commits
             for name in gits(shared, "ls-tree", "-r", "--name-only", c).split()
             if name.endswith("/a.txt")}
    assert {n.split("/")[-2] for n in saved} == {"tree4", "tree5"}, saved
