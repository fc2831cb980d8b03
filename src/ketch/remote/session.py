"""The server process behind a remote repository (ssh, or a local `ketch
server` for `-r :PATH`) and the session with it: start, handshake, errors in
the server's own words (its `error` replies, or the last lines of its stderr
when it dies), and ending it, politely or, after an interrupt, at once."""

from __future__ import annotations

import fcntl
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

from ketch.errors import KetchError, NotARepository
from ketch.remote.protocol import Conn, ConnectionLost, ProtocolError, RemoteError, shown
from ketch.remote.spec import RemoteSpec


def _server_argv(spec: RemoteSpec) -> list[str]:
    if spec.protocol == "file":
        return [sys.executable, "-m", "ketch", "server"]
    custom = os.environ.get("KETCH_RSH")
    # AES-GCM first: with AES-NI it moves ~40% more per core than OpenSSH's
    # default chacha20, and a backup is bulk transfer. Both are AEAD ciphers.
    rsh = shlex.split(custom) if custom else [
        "ssh", "-o", "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,"
        "chacha20-poly1305@openssh.com"]
    remote = os.environ.get("KETCH_REMOTE_COMMAND", "ketch server")
    port = ["-p", str(spec.port)] if spec.port is not None else []
    assert spec.host is not None
    return [*rsh, *port, spec.host, "--", remote]


def _widen_pipe(fd: int) -> None:
    """A 1 MiB pipe instead of 64 KiB: the sender keeps going while the other
    side digests a batch, instead of blocking every 64 KiB."""
    try:
        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size for this user: keep the default


def interrupted() -> bool:
    """Is the exception being handled an interrupt (Ctrl-C, SIGTERM), not an error?"""
    e = sys.exc_info()[1]
    return e is not None and not isinstance(e, Exception)


class _Tail:
    """The end of what the server (or ssh) writes on stderr: when it fails, its
    own last words say why better than an exit code."""

    def __init__(self, fd: int) -> None:
        self._buf = bytearray()
        self._done = threading.Event()
        threading.Thread(target=self._pump, args=(fd,), daemon=True).start()

    def _pump(self, fd: int) -> None:
        try:
            while chunk := os.read(fd, 1 << 16):
                self._buf += chunk
                del self._buf[: -(1 << 14)]
        except OSError:
            pass
        finally:
            os.close(fd)
            self._done.set()

    def lines(self, n: int = 3, wait: float = 1.0) -> list[str]:
        """Its last `n` non-empty lines, a server's "ketch: error:" said as "server:"."""
        self._done.wait(wait)
        text = bytes(self._buf).decode(errors="replace")
        out = [ln.strip() for ln in text.splitlines() if ln.strip()][-n:]
        return ["server: " + ln[len("ketch: error: "):] if ln.startswith("ketch: error: ")
                else ln for ln in out]


class Client:
    """One server process and the protocol exchanges with it."""

    def __init__(self, spec: RemoteSpec, *, create: bool = False) -> None:
        self.spec = spec
        argv = _server_argv(spec)
        err_r, err_w = os.pipe()
        try:
            # Its own session: a terminal's Ctrl-C reaches only this process,
            # which then ends the connection itself (see abandon()).
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err_w, start_new_session=True)
        except OSError as e:
            os.close(err_r)
            raise KetchError(f"cannot start {argv[0]}: {e.strerror}") from None
        finally:
            os.close(err_w)
        self.stderr = _Tail(err_r)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        for f in (self.proc.stdin, self.proc.stdout):
            _widen_pipe(f.fileno())
        self.conn = Conn(self.proc.stdout.fileno(), self.proc.stdin.fileno(), peer=str(spec))
        self.closed = False
        try:
            # Both requests in one write: the server answers them in turn,
            # and the session starts one round trip sooner.
            self.conn.write(b"help\n")
            if spec.path:
                verb = b"init-dir " if create else b"set-dir "
                self.conn.write(verb + os.fsencode(spec.path) + b"\n")
            self.commands = self._help()
            if spec.path:
                self.check_ok()
        except BaseException:
            self.abandon()
            raise

    def _failed(self, what: str, rv: int | None) -> KetchError:
        how = f" (server command exited with code {rv})" if rv else ""
        return KetchError("\n".join([*self.stderr.lines(), f"{what}{how}"]))

    def _lost(self, e: ConnectionLost) -> KetchError:
        rv = None
        try:
            rv = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        return self._failed(f"connection to {self.spec} lost", rv)

    def check_ok(self) -> None:
        try:
            self.conn.check_ok()
        except ConnectionLost as e:
            raise self._lost(e) from None
        except RemoteError as e:
            msg = str(e)
            if "not a repository" in msg:
                # The server names the path it was given, which the spec shows already.
                said = f"{self.spec.path}: "
                if self.spec.path and msg.startswith(said):
                    msg = msg[len(said):]
                raise NotARepository(f"{self.spec}: {msg}") from None
            raise KetchError(f"server: {msg}") from None

    def _help(self) -> set[bytes]:
        try:
            try:
                self.conn.flush()
            except ConnectionLost:
                pass  # a peer that spoke and exited at once: what it said is in the pipe
            head = self.conn.readline()
            if not head:
                raise ConnectionLost("")
            if head != b"Commands:\n":
                raise ProtocolError(f"{self.spec}: not a bup/ketch server "
                                    f"(it said: {shown(head.rstrip(), 60)})")
            names = {line.strip() for line in self.conn.lines_until_blank()}
        except ConnectionLost as e:
            raise self._lost(e) from None
        self.check_ok()
        return names

    def require(self, name: bytes) -> None:
        if name not in self.commands:
            raise KetchError(f"{self.spec}: the server has no {name.decode()} command")

    def lines(self) -> Iterator[bytes]:
        try:
            yield from self.conn.lines_until_blank()
        except ConnectionLost as e:
            raise self._lost(e) from None

    def read(self, n: int) -> bytes:
        try:
            return self.conn.read(n)
        except ConnectionLost as e:
            raise self._lost(e) from None

    def read_u32(self) -> int:
        try:
            return self.conn.read_u32()
        except ConnectionLost as e:
            raise self._lost(e) from None

    def _close_pipes(self) -> None:
        self.closed = True
        self.conn.close()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass  # unflushed data to a server that is gone

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.conn.write(b"quit\n")
            self.conn.flush()
        except KetchError:
            pass
        self._close_pipes()
        try:
            rv = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rv = self.proc.wait()
        if rv:
            raise self._failed(f"the server for {self.spec} failed", rv)

    def abandon(self) -> None:
        """End the session without another exchange: after an interrupt the
        stream may stop in the middle of a frame, which the server would wait
        for forever. Closed pipes are a cut connection to it: it keeps the
        complete objects and exits; ssh gets a moment to pass that on."""
        if self.closed:
            return
        self._close_pipes()
        try:
            self.proc.wait(0.5)
        except subprocess.TimeoutExpired:
            if self.spec.protocol == "file":
                return  # a local server is closing its pack: a signal would cut that short
            # The far side has (or will have, when the TCP connection drops) its
            # end of stream whatever ssh is still doing.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
