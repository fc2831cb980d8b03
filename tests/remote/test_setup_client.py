"""`ketch server setup-client` as a sysadmin runs it: as root, for a backup user
that sshd logs the machine in as; the README's ssh URL for that key; re-runs
against an existing authorized_keys file; a ketch the backup user cannot run."""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SRC_DIR, RunKetch, in_ci
from tests.remote.test_remote import build_small_tree
from tests.services.sshd import SshServer

_names = itertools.count()


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", path],
                   check=True, capture_output=True)
    return path


def _lines(err: bytes) -> list[str]:
    return err.decode().strip().splitlines()


class User:
    def __init__(self, name: str) -> None:
        import pwd

        pw = pwd.getpwnam(name)
        self.name, self.uid, self.gid = name, pw.pw_uid, pw.pw_gid

    def run(self, *argv: str | Path, **kw: object) -> subprocess.CompletedProcess[bytes]:
        """`argv` as this user, as sshd starts a forced command: its shell's -c.
        (setpriv's own exec, done before it has dropped all of root's powers,
        can run what the user could not.)"""
        return subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}",
                               "--init-groups", "--reset-env", "/bin/sh", "-c",
                               shlex.join(map(str, argv))],
                              capture_output=True, **kw)  # type: ignore[call-overload]


@pytest.fixture
def backup_user() -> Iterator[User]:
    """A throwaway system user, like the `backup` user of the README."""
    missing = [t for t in ("useradd", "userdel", "setpriv") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        why = f"needs root and {', '.join(missing) or 'useradd'}"
        if in_ci():
            pytest.fail(f"{why}; CI requires them")
        pytest.skip(why)
    name = f"kt{os.getpid() % 100000}x{next(_names)}"
    # A '*' password: no password login, but not locked (sshd refuses locked ones).
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--home-dir", "/", "--shell", "/bin/sh", "--password", "*", name],
                   check=True, capture_output=True)
    try:
        yield User(name)
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can reach: pytest's tmp_path sits under a mode 700
    directory, which every check for the backup user would (rightly) refuse."""
    d = Path(tempfile.mkdtemp(prefix="ketch-setup-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _python_for(user: User) -> str:
    """A python of this version that `user` can run, with ketch's dependencies."""
    v = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = f"PYTHONPATH={SRC_DIR}:{sysconfig.get_paths()['purelib']}"
    for cand in (os.path.realpath(sys.executable), f"/usr/bin/python{v}",
                 f"/usr/local/bin/python{v}"):
        if os.path.exists(cand) and user.run(
                "env", env, cand, "-c", "import ketch.remote.server").returncode == 0:
            return cand
    msg = f"no python{v} that a non-root user can run with ketch's dependencies"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


def _ketch_for(user: User, where: Path) -> Path:
    """A ketch executable `user` can run: this checkout's code, world-readable."""
    script = where / "bin" / "ketch"
    script.parent.mkdir(mode=0o755)
    pythonpath = f"{SRC_DIR}:{sysconfig.get_paths()['purelib']}"
    script.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(pythonpath)} "
                      f"exec {_python_for(user)} -m ketch \"$@\"\n")
    script.chmod(0o755)
    return script


def _ssh_as(sshd: SshServer, key: Path, user: str, where: Path) -> dict[str, str]:
    """The client's env: an `ssh` on PATH that logs in as `user` with `key`."""
    argv = sshd.ssh_argv(key)
    argv[argv.index("-l") + 1] = user
    del argv[argv.index("-p"):argv.index("-p") + 2]  # the URL gives the port
    d = where / "ssh-wrapper"
    d.mkdir()
    (d / "ssh").write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n')
    (d / "ssh").chmod(0o755)
    return {"PATH": f"{d}{os.pathsep}{os.environ['PATH']}"}


# -- item 3: the README's URL, ssh://user@host[:port]/, is the key's repository ----


def test_readme_ssh_url_reaches_the_keys_repository(sshd: SshServer, run_ketch: RunKetch,
                                                    tmp_path: Path) -> None:
    root = tmp_path / "repos"
    key = _keygen(tmp_path / "web-url")
    proc = run_ketch("server", "setup-client", "--root", root, "--user", "root", "web",
                     f"{key}.pub", check=True)
    sshd.add_authorized_line(proc.stdout.decode().strip())
    env = {"PATH": sshd.path_with_wrapper(key)}
    base = f"ssh://root@{sshd.host}:{sshd.port}"
    # What `config init --repository ssh://…/` tells the user to run next.
    init = run_ketch("init", "-r", f"{base}/", env=env)
    assert init.returncode == 0, init.stderr
    assert _lines(init.stderr) == [
        f"Using existing ketch repository at {base}/ (the server's default)"]
    tree = tmp_path / "tree"
    build_small_tree(tree)
    save = run_ketch("save", "-r", f"{base}/", "-n", "etc", tree, env=env)
    assert save.returncode == 0, save.stderr
    for url in (f"{base}/", base, f"ssh://{sshd.host}:{sshd.port}/"):
        ls = run_ketch("ls", "-r", url, "etc", env=env)
        assert ls.returncode == 0, (url, ls.stderr)
        assert ls.stdout.count(b"\n") == 2, (url, ls.stdout)
    assert (root / "web" / "refs" / "heads" / "etc").exists()


# -- item 5: the repository belongs to the user who will write to it --------------


def test_as_root_without_a_user_refuses(run_ketch: RunKetch, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    key = _keygen(tmp_path / "k")
    proc = run_ketch("server", "setup-client", "--root", tmp_path / "repos", "web", f"{key}.pub")
    assert proc.returncode == 2 and proc.stdout == b""
    assert _lines(proc.stderr) == [
        "ketch: error: as root, say which user the machine logs in as: --user NAME "
        "(or --authorized-keys ~NAME/.ssh/authorized_keys)"]
    assert not (tmp_path / "repos").exists()


def test_root_sets_up_a_repository_the_backup_user_writes_over_ssh(
        backup_user: User, public_dir: Path, run_ketch: RunKetch, tmp_path: Path) -> None:
    """The README's server setup, as root, then a save from the machine: the key
    logs in as the backup user, who must own the repository to write to it."""
    with SshServer.start(public_dir / "sshd") as sshd:
        # The backup user's authorized_keys: setup-client takes the user from it.
        os.chown(sshd.authorized_keys, backup_user.uid, backup_user.gid)
        key = _keygen(tmp_path / "web")
        root = public_dir / "srv" / "ketch"
        proc = run_ketch("server", "setup-client", "--root", root,
                         "--command", _ketch_for(backup_user, public_dir),
                         "--authorized-keys", sshd.authorized_keys, "web1", f"{key}.pub")
        assert proc.returncode == 0, proc.stderr
        assert _lines(proc.stderr) == [
            f"Created repository {root / 'web1'} (owner {backup_user.name})",
            f"Added the key to {sshd.authorized_keys}"]
        owners = {p.stat().st_uid for p in [root, *root.rglob("*")]}
        assert owners == {backup_user.uid}
        tree = tmp_path / "tree"
        build_small_tree(tree)
        env = _ssh_as(sshd, key, backup_user.name, tmp_path)
        url = f"ssh://{backup_user.name}@{sshd.host}:{sshd.port}/"
        save = run_ketch("save", "-r", url, "-n", "etc", tree, env=env)
        assert save.returncode == 0, save.stderr
        ls = run_ketch("ls", "-r", url, "etc", env=env)
        assert ls.returncode == 0 and ls.stdout.count(b"\n") == 2, ls.stderr
        packs = list((root / "web1" / "objects" / "pack").glob("*.pack"))
        assert packs and all(p.stat().st_uid == backup_user.uid for p in packs)


def test_existing_repository_of_another_user_is_named(backup_user: User, public_dir: Path,
                                                      run_ketch: RunKetch,
                                                      tmp_path: Path) -> None:
    root = public_dir / "repos"
    run_ketch("init", "-d", root / "web1", check=True)  # as root: root's
    key = _keygen(tmp_path / "k")
    exe = _ketch_for(backup_user, public_dir)
    proc = run_ketch("server", "setup-client", "--root", root, "--user", backup_user.name,
                     "--command", exe, "web1", f"{key}.pub")
    assert proc.returncode == 2 and proc.stdout == b""
    u = backup_user.name
    assert _lines(proc.stderr) == [
        f"ketch: error: {root / 'web1'} belongs to root; it must belong to {u}, "
        f"who will use it (chown -R {u}: {root / 'web1'})"]
    # After the chown it says suggests, the same command succeeds.
    subprocess.run(["chown", "-R", f"{u}:", root / "web1"], check=True)
    proc = run_ketch("server", "setup-client", "--root", root, "--user", u, "--command", exe,
                     "web1", f"{key}.pub")
    assert proc.returncode == 0, proc.stderr
    assert _lines(proc.stderr) == [f"Using existing repository {root / 'web1'} (owner {u})"]


def test_a_user_sets_up_their_own_repository(backup_user: User, public_dir: Path,
                                             tmp_path: Path) -> None:
    """Not root, no --user: the repository is for the user running the command."""
    home = public_dir / "home"
    home.mkdir()
    os.chown(home, backup_user.uid, backup_user.gid)
    exe = _ketch_for(backup_user, public_dir)
    pub = _keygen(tmp_path / "k").with_suffix(".pub").read_text().strip()
    proc = backup_user.run("env", f"HOME={home}", exe, "server", "setup-client", "web1", pub)
    assert proc.returncode == 0, proc.stderr
    assert _lines(proc.stderr) == [
        f"Created repository {home / 'ketch' / 'web1'} (owner {backup_user.name})"]
    assert {p.stat().st_uid for p in home.rglob("*")} == {backup_user.uid}


def test_root_the_backup_user_cannot_reach_is_refused(backup_user: User, public_dir: Path,
                                                      run_ketch: RunKetch,
                                                      tmp_path: Path) -> None:
    private = public_dir / "private"
    private.mkdir(mode=0o700)
    key = _keygen(tmp_path / "k")
    proc = run_ketch("server", "setup-client", "--root", private / "ketch",
                     "--command", _ketch_for(backup_user, public_dir),
                     "--user", backup_user.name, "web1", f"{key}.pub")
    assert proc.returncode == 2, proc.stderr
    u = backup_user.name
    assert _lines(proc.stderr) == [
        f"ketch: error: {private} is mode 700 (owner root, group root): {u} cannot reach "
        f"{private / 'ketch' / 'web1'}; choose a --root {u} can reach (e.g. /srv/ketch)"]
    assert not (private / "ketch").exists()


# -- item 9: authorized_keys, re-runs and keys that already reach elsewhere -------


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "authorized_keys"


def _setup(run_ketch: RunKetch, root: Path, keys: Path, name: str,
           key: Path) -> subprocess.CompletedProcess[bytes]:
    return run_ketch("server", "setup-client", "--root", root, "--user", "root",
                     "--authorized-keys", keys, name, f"{key}.pub")


def test_rerun_for_the_same_machine_appends_nothing(run_ketch: RunKetch, tmp_path: Path,
                                                     keys_file: Path) -> None:
    key = _keygen(tmp_path / "k")
    first = _setup(run_ketch, tmp_path / "repos", keys_file, "web1", key)
    assert first.returncode == 0, first.stderr
    before = keys_file.read_bytes()
    again = _setup(run_ketch, tmp_path / "repos", keys_file, "web1", key)
    assert again.returncode == 0, again.stderr
    assert _lines(again.stderr) == [
        f"web1 is already set up: line 1 of {keys_file} has this key for "
        f"{tmp_path / 'repos' / 'web1'}"]
    assert keys_file.read_bytes() == before and before.count(b"\n") == 1
    assert keys_file.stat().st_mode & 0o777 == 0o600  # made by setup-client: sshd insists
    assert again.stdout == first.stdout


def test_same_key_for_another_machine_is_refused(run_ketch: RunKetch, tmp_path: Path,
                                                 keys_file: Path) -> None:
    key = _keygen(tmp_path / "k")
    keys_file.write_text("# the backup server's keys\n\n")
    assert _setup(run_ketch, tmp_path / "repos", keys_file, "web1", key).returncode == 0
    before = keys_file.read_bytes()
    proc = _setup(run_ketch, tmp_path / "repos", keys_file, "db1", key)
    assert proc.returncode == 2 and proc.stdout == b""
    assert _lines(proc.stderr) == [
        f"ketch: error: {keys_file} line 3 already has this key ('ketch:web1', restricted to "
        f"{tmp_path / 'repos' / 'web1'}), and sshd uses the first line that matches: "
        "give db1 its own key"]
    assert keys_file.read_bytes() == before
    assert not (tmp_path / "repos" / "db1").exists()


def test_key_already_in_a_hand_written_line_is_refused(run_ketch: RunKetch, tmp_path: Path,
                                                       keys_file: Path) -> None:
    key = _keygen(tmp_path / "k")
    ktype, blob, _ = (tmp_path / "k.pub").read_text().split()
    other = _keygen(tmp_path / "other").with_suffix(".pub").read_text().strip()
    # Quoted commas and spaces in options, a comment, a blank line, no final newline.
    keys_file.write_text(
        f"# admins\n{other}\n\n"
        f'from="10.0.0.1,10.0.0.2",command="echo \\"a, b\\"",no-pty {ktype} {blob} admin@laptop')
    proc = _setup(run_ketch, tmp_path / "repos", keys_file, "web1", key)
    assert proc.returncode == 2
    assert _lines(proc.stderr) == [
        f"ketch: error: {keys_file} line 4 already has this key ('admin@laptop', with another "
        "forced command), and sshd uses the first line that matches: give web1 its own key"]
    # Without a forced command the key is a full login: refused as well.
    keys_file.write_text(f"{ktype} {blob}\n")
    proc = _setup(run_ketch, tmp_path / "repos", keys_file, "web1", key)
    assert proc.returncode == 2
    assert "line 1 already has this key (ssh-ed25519 key, with no forced command" in \
        proc.stderr.decode()
    # Another key's hand-written line is no obstacle, and the file's last line
    # keeps its own line.
    keys_file.write_text(f"# admins\n{other}")
    proc = _setup(run_ketch, tmp_path / "repos", keys_file, "web1", key)
    assert proc.returncode == 0, proc.stderr
    text = keys_file.read_text()
    assert text == f"# admins\n{other}\n{proc.stdout.decode()}"


# -- item 13: the forced command must be runnable by the backup user --------------


def test_ketch_the_backup_user_cannot_run_is_refused(backup_user: User, public_dir: Path,
                                                     run_ketch: RunKetch,
                                                     tmp_path: Path) -> None:
    """The issue's virtualenv: bin/ketch is reachable, its python under /root is not."""
    private = public_dir / "root"
    private.mkdir(mode=0o700)
    (private / "python3").symlink_to(os.path.realpath(sys.executable))
    venv_bin = public_dir / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(private / "python3")
    exe = venv_bin / "ketch"
    exe.write_text(f"#!{venv_bin / 'python'}\nimport ketch.cli.main\n")
    exe.chmod(0o755)
    # As sshd would run it: the check below is right to refuse.
    assert backup_user.run(exe, "--version").returncode == 126
    key = _keygen(tmp_path / "k")
    root = public_dir / "repos"
    u = backup_user.name
    proc = run_ketch("server", "setup-client", "--root", root, "--user", u,
                     "--command", exe, "web1", f"{key}.pub")
    assert proc.returncode == 2 and proc.stdout == b""
    assert _lines(proc.stderr) == [
        f"ketch: error: {private} is mode 700 (owner root, group root): {u} cannot run {exe}; "
        f"install ketch where {u} can run it (e.g. pip install into /opt/ketch) "
        "or pass --command PATH"]
    assert not root.exists()
    # A ketch the user can run is taken, and written into the forced command.
    good = _ketch_for(backup_user, public_dir)
    assert backup_user.run(good, "--version").returncode == 0
    proc = run_ketch("server", "setup-client", "--root", root, "--user", u,
                     "--command", good, "web1", f"{key}.pub")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith(f'command="{good} server --restrict-to ')


def test_ketch_not_executable_is_refused(backup_user: User, public_dir: Path,
                                         run_ketch: RunKetch, tmp_path: Path) -> None:
    exe = public_dir / "ketch"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o744)
    proc = run_ketch("server", "setup-client", "--root", public_dir / "repos",
                     "--user", backup_user.name, "--command", exe, "web1",
                     f"{_keygen(tmp_path / 'k')}.pub")
    assert proc.returncode == 2
    assert _lines(proc.stderr)[0].startswith(
        f"ketch: error: {exe} is mode 744 (owner root, group root): {backup_user.name} "
        f"cannot run {exe};")
