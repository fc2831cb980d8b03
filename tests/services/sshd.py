"""A private OpenSSH server on 127.0.0.1 for tests that need a real ssh remote.

Recipe and pitfalls: shared/reference/test-services.md, section 1.  The
server runs as root and the tests log in as root (the test suite runs as
root), with key authentication only and an authorized_keys file of its own, so
nothing under /etc/ssh or /root/.ssh is read or written.

    with SshServer.start(tmp_path) as sshd:
        key = sshd.new_key("client")
        subprocess.run([*sshd.ssh_argv(key), sshd.host, "echo hi"])
        # Programs that run plain `ssh` (bup, ketch's client): put
        # sshd.wrapper_dir(key) first on PATH and use ssh://127.0.0.1:PORT/path.

Everything lives in the work directory (config, host key, client keys,
authorized_keys, log, a HOME for the remote sessions); removing it is left to
pytest's tmp dir handling, so the log is still there after a failure.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.services.process import ServiceProcess, free_port

SSHD = Path("/usr/sbin/sshd")
SSH = Path("/usr/bin/ssh")
SSH_KEYGEN = Path("/usr/bin/ssh-keygen")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# A free port can be taken by someone else between our probe and sshd's bind.
_PORT_ATTEMPTS = 5

# Client options shared by ssh_argv() and the PATH wrappers.
_CLIENT_OPTIONS: tuple[str, ...] = (
    # Read neither /etc/ssh/ssh_config nor root's ~/.ssh/config: ssh finds the
    # latter through the passwd entry, not $HOME, so git_env does not hide it.
    "-F", "/dev/null",
    # The host key is new for every server; never touch a known_hosts file.
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    # Fail instead of prompting when a key is refused.
    "-o", "BatchMode=yes",
    # Only the -i key: an ssh-agent or ~/.ssh/id_* must not log in instead.
    "-o", "IdentitiesOnly=yes",
)  # fmt: skip

# Paths go into sshd_config and authorized_keys unquoted; AuthorizedKeysFile
# also expands %-tokens.  pytest's tmp paths always match this.
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+-]+")


def missing_binaries() -> list[str]:
    """The OpenSSH programs this module needs that are not installed."""
    return [str(p) for p in (SSHD, SSH, SSH_KEYGEN) if not os.access(p, os.X_OK)]


def forced_command_option(command: str) -> str:
    """The ``command="..."`` authorized_keys option that forces *command*.

    sshd's parser (auth-options.c, opt_dequote) knows one escape only: ``\\"``
    stands for ``"``.  Every other backslash is kept literally, so doubling
    backslashes would change the command.  It follows that a command cannot end
    in a backslash (that would escape the closing quote).
    """
    if any(c in command for c in "\n\r\0"):
        raise ValueError(f"forced command must be one line: {command!r}")
    if command.endswith("\\"):
        raise ValueError(f"authorized_keys cannot express a command ending in '\\': {command!r}")
    return 'command="' + command.replace('"', '\\"') + '"'


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        [str(SSH_KEYGEN), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )


class SshServer(ServiceProcess):
    """``/usr/sbin/sshd -D -e`` on 127.0.0.1 and a free port; see the module doc."""

    name = "sshd"
    host = "127.0.0.1"
    user = "root"

    def __init__(self, workdir: Path, *, env: Mapping[str, str] | None = None) -> None:
        """Lay out the work directory's paths; start() also launches sshd."""
        self.workdir = Path(workdir).resolve()
        if not _SAFE_PATH.fullmatch(str(self.workdir)):
            raise ValueError(f"sshd work dir must match {_SAFE_PATH.pattern}: {self.workdir}")
        self.config_path = self.workdir / "sshd_config"
        self.host_key = self.workdir / "host_key"
        self.authorized_keys = self.workdir / "authorized_keys"
        super().__init__(self.workdir / "sshd.log")
        self.pid_path = self.workdir / "sshd.pid"
        self.keys_dir = self.workdir / "keys"
        self.wrappers_dir = self.workdir / "wrappers"
        # HOME of the remote sessions, so that nothing the server side runs
        # reads or writes /root (the bash that runs the command sources
        # ~/.bashrc on Debian, bup/ketch default to ~/.bup, ~/.ketch).
        self.home = self.workdir / "home"
        self.port = 0
        # sshd gives sessions a fresh environment; these mirror the git_env
        # fixture on the server side, and *env* adds to them.
        self.session_env: dict[str, str] = {
            "HOME": str(self.home),
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
            **(env or {}),
        }
        for name, value in self.session_env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or re.search(r'[\s"\\]', value):
                raise ValueError(f"unsupported session variable for SetEnv: {name}={value!r}")
        self._wrappers: dict[Path, Path] = {}

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, *, env: Mapping[str, str] | None = None) -> SshServer:
        """Start sshd in *workdir* (created if needed); return once it answers.

        *env* adds variables to the remote sessions' environment (sshd
        ``SetEnv``); values may not contain whitespace, quotes or backslashes.
        """
        return cls(workdir, env=env)._start()

    def _launch(self) -> None:
        # Privilege separation dir: without systemd nobody creates it on this
        # tmpfs, and sshd refuses to start without it (pitfall 1).
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for d in (self.workdir, self.keys_dir, self.wrappers_dir, self.home):
            d.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            _keygen(self.host_key, "ketch-test-sshd-host")
        self.authorized_keys.touch()
        self.start_on_free_ports(
            self._spawn, self._answers, tries=_PORT_ATTEMPTS, timeout=START_TIMEOUT, interval=0.02
        )

    def _write_config(self) -> None:
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_path}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # No PAM stack in a test container; sshd's own checks suffice.
            "UsePAM no",
            # Our files sit under /tmp (sticky, world-writable): with
            # StrictModes sshd refuses them (pitfall 2).
            "StrictModes no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            # Tests may open many connections at once; the default 10:30:100
            # starts dropping unauthenticated ones at random.
            "MaxStartups 100",
            "Subsystem sftp internal-sftp",
            "SetEnv " + " ".join(f"{k}={v}" for k, v in self.session_env.items()),
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        # OpenSSH >= 9.8 delays or refuses a source address after failed or
        # aborted logins, and every test connects from 127.0.0.1.  Older sshd
        # rejects the keyword, so only add it when this sshd accepts it.
        probe = subprocess.run(
            [str(SSHD), "-t", "-f", str(self.config_path), "-o", "PerSourcePenalties=no"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        if probe.returncode == 0:
            with self.config_path.open("a") as f:
                f.write("PerSourcePenalties no\n")

    def _spawn(self) -> str:
        self.port = free_port()
        self._write_config()
        # sshd's per-connection children inherit stderr, so it goes to the log
        # file, never a pipe (pitfall 5).  Absolute path: sshd re-execs itself
        # and refuses otherwise.
        self.spawn([str(SSHD), "-D", "-e", "-f", str(self.config_path)])
        return f"sshd to answer on {self.host}:{self.port}"

    def _answers(self) -> bool:
        """True when an SSH server greets us on our port.

        Reading the banner, not just connecting, makes sure it is sshd that
        listens there and that it has got as far as serving connections.
        """
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as s:
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop sshd (idempotent).  Sessions already open are left to finish."""
        self.stop_process(timeout=STOP_TIMEOUT)

    # -- keys and clients ----------------------------------------------------

    def new_key(
        self, name: str, *, forced_command: str | None = None, restrict: bool = True
    ) -> Path:
        """Make an ed25519 client key (no passphrase) that may log in as root.

        With *forced_command* the key only ever runs that command (the client's
        request is in ``$SSH_ORIGINAL_COMMAND``), and *restrict* also denies
        pty, forwarding and agent.  Without it *restrict* is ignored, so the
        key can run anything.  Returns the private key's path.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"key name must be a plain file name: {name!r}")
        key = self.keys_dir / name
        if key.exists():
            raise FileExistsError(f"key {name!r} exists already: {key}")
        _keygen(key, f"ketch-test-{name}")
        public = key.with_name(key.name + ".pub").read_text().strip()
        if forced_command is None:
            self.add_authorized_line(public)
        else:
            options = forced_command_option(forced_command)
            if restrict:
                options += ",restrict"
            self.add_authorized_line(f"{options} {public}")
        return key

    def add_authorized_line(self, line: str) -> None:
        """Append one authorized_keys line (e.g. from ``ketch server setup-client``).

        sshd reads the file at every login, so this works while it runs.
        """
        line = line.strip()
        if not line or "\n" in line or "\r" in line:
            raise ValueError(f"expected exactly one authorized_keys line: {line!r}")
        with self.authorized_keys.open("a") as f:
            f.write(line + "\n")

    def ssh_argv(self, key: Path) -> list[str]:
        """ssh with *key* and our port, without the host: ``[*argv, host, cmd]``."""
        return [str(SSH), "-p", str(self.port), "-i", str(key), *_CLIENT_OPTIONS, "-l", self.user]

    def wrapper_dir(self, key: Path) -> Path:
        """A directory holding an ``ssh`` that logs in with *key*; put it first on PATH.

        For programs that run plain ``ssh`` and take no ``-i``/``-o`` (bup,
        ketch's client; pitfall 7).  No ``-p``: those programs pass the port
        from ``ssh://127.0.0.1:PORT/path`` themselves.  One directory per key.
        """
        key = Path(key).resolve()
        existing = self._wrappers.get(key)
        if existing is not None:
            return existing
        d = self.wrappers_dir / f"{len(self._wrappers)}-{key.name}"
        d.mkdir(parents=True)
        argv = [str(SSH), "-i", str(key), *_CLIENT_OPTIONS, "-l", self.user]
        script = d / "ssh"
        script.write_text(f'#!/bin/sh\nexec {shlex.join(argv)} "$@"\n')
        script.chmod(0o755)
        self._wrappers[key] = d
        return d

    def path_with_wrapper(self, key: Path, path: str | None = None) -> str:
        """*path* (default: $PATH) with wrapper_dir(key) in front."""
        base = os.environ.get("PATH", os.defpath) if path is None else path
        return f"{self.wrapper_dir(key)}{os.pathsep}{base}"

    def remote_url(self, path: Path | str) -> str:
        """``ssh://127.0.0.1:PORT/abs/path`` as bup's ``-r`` takes it.

        The path must be absolute and is written without a trailing slash: a
        bare ``ssh://host:port/`` makes bup use ``/`` as the repository
        (pitfall 7).
        """
        p = str(path)
        if not p.startswith("/"):
            raise ValueError(f"remote path must be absolute: {p!r}")
        return f"ssh://{self.host}:{self.port}{p.rstrip('/') or '/'}"
