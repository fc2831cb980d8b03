"""When the server fails, the client says why in the server's own words: its
`error` replies, or the last lines it wrote on stderr before it died.

The server runs under a real sshd. Root ignores file modes, so these servers
run as root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv), which
makes a read-only repository refuse them as it refuses any other backup user
(a non-root user cannot run this test suite's Python, which lives under /root)."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import SRC_DIR, RunKetch
from tests.gitutil import git
from tests.remote.test_remote import Machine, build_small_tree
from tests.services.sshd import SshServer

SETPRIV = shutil.which("setpriv")


def _server(*args: str, setpriv: bool = True) -> str:
    drop = [SETPRIV or "setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner",
            "--"] if setpriv else []
    return shlex.join([*drop, "env", f"PYTHONPATH={SRC_DIR}", sys.executable, "-m", "ketch",
                       "server", *args])


@pytest.fixture
def machine(sshd: SshServer, request: pytest.FixtureRequest) -> Machine:
    if SETPRIV is None:
        pytest.skip("setpriv (util-linux) is not installed")
    return Machine.new(sshd, request.node.name.replace("[", "-").rstrip("]"),
                       remote_command=_server())


def _read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        if p.is_dir():
            p.chmod(0o555)


def _error_lines(stderr: bytes) -> list[str]:
    lines = stderr.decode().splitlines()
    assert lines, "nothing on stderr"
    assert all(ln.startswith("ketch: error: ") for ln in lines), lines
    assert "Traceback" not in stderr.decode()
    return lines


def test_save_into_an_unwritable_repository_says_why(machine: Machine, run_ketch: RunKetch,
                                                      tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    build_small_tree(tree)
    repo = tmp_path / "srv"
    run_ketch("init", "-d", repo, check=True)
    _read_only(repo / "objects")
    try:
        res = run_ketch("save", "-r", machine.url(repo), "-n", "m", "-q", tree, env=machine.env)
    finally:
        (repo / "objects").chmod(0o755)
    assert res.returncode == 2, res.stderr.decode()
    lines = _error_lines(res.stderr)
    assert lines[0].startswith(f"ketch: error: server: {repo}/objects"), lines
    assert lines[0].endswith(": Permission denied"), lines
    assert git(repo, "for-each-ref") == b""


def test_init_in_an_unwritable_place_says_why(machine: Machine, run_ketch: RunKetch,
                                              tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o555)
    res = run_ketch("init", "-r", machine.url(parent / "new"), env=machine.env)
    assert res.returncode == 2, res.stderr.decode()
    lines = _error_lines(res.stderr)
    assert lines == [f"ketch: error: server: {parent}/new: Permission denied"], lines
    assert not (parent / "new").exists()


def test_ls_of_a_missing_repository_says_so(machine: Machine, run_ketch: RunKetch,
                                            tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    res = run_ketch("ls", "-r", machine.url(missing), env=machine.env)
    assert res.returncode == 2, res.stderr.decode()
    lines = _error_lines(res.stderr)
    assert lines == [f"ketch: error: {machine.url(missing)}: not a repository"], lines


def test_a_server_that_dies_is_heard(sshd: SshServer, run_ketch: RunKetch,
                                     tmp_path: Path) -> None:
    """A server that cannot start leaves only its stderr and an exit code: both are shown."""
    missing = tmp_path / "no-such-dir"
    m = Machine.new(sshd, "dies", remote_command=_server("--restrict-to", str(missing),
                                                          setpriv=False))
    res = run_ketch("ls", "-r", m.url(missing), env=m.env)
    assert res.returncode == 2, res.stderr.decode()
    lines = _error_lines(res.stderr)
    assert f"ketch: error: server: --restrict-to {missing}: no such directory" in lines, lines
    assert lines[-1].endswith("(server command exited with code 2)"), lines


def test_an_unreadable_index_on_the_server_says_why(machine: Machine, run_ketch: RunKetch,
                                                    tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    build_small_tree(tree)
    repo = tmp_path / "srv"
    run_ketch("init", "-d", repo, check=True)
    run_ketch("save", "-d", repo, "-n", "local", "-q", tree, check=True)
    [idx] = (repo / "objects" / "pack").glob("*.idx")
    idx.chmod(0)
    res = run_ketch("save", "-r", machine.url(repo), "-n", "m", "-q", tree, env=machine.env)
    assert res.returncode == 2, res.stderr.decode()
    lines = _error_lines(res.stderr)
    assert lines == [f"ketch: error: server: {idx}: Permission denied"], lines
