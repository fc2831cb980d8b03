"""Process plumbing shared by the service launchers (sshd, MariaDB, PostgreSQL, SeaweedFS).

Each launcher is a :class:`ServiceProcess`: one child process that it owns, a
log file whose tail goes into every error, readiness polling with a deadline,
and a stop that signals, waits and then kills.  What is particular to a
service (its command line, how to tell it answers, which signal stops it,
what to clean up) stays in its own module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

STOP_TIMEOUT = 10.0
LOG_TAIL_CHARS = 20_000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """*n* distinct free ports: all held open at once so none repeats."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    log_tail: Callable[[], str] | None = None,
    *,
    interval: float = 0.05,
    deadline: float | None = None,
) -> None:
    """Call *predicate* every *interval* seconds until it returns True.

    After *timeout* seconds (or at *deadline*, a ``time.monotonic()`` value,
    when given) raise TimeoutError naming *what* was awaited, with
    ``log_tail()`` appended.  Exceptions from *predicate* propagate.
    """
    end = time.monotonic() + timeout if deadline is None else deadline
    while not predicate():
        if time.monotonic() >= end:
            tail = f"\n{log_tail()}" if log_tail is not None else ""
            raise TimeoutError(f"gave up waiting for {what} after {timeout:g} s{tail}")
        time.sleep(interval)


class ServiceExited(RuntimeError):
    """The service's process ended while we waited for it to answer."""

    def __init__(self, name: str, log_text: str) -> None:
        super().__init__(f"{name} exited during start-up\n{log_text}")
        self.log_text = log_text


class ServiceProcess:
    """One service process owned by a launcher, with its log file.

    Subclasses set ``name`` (used in messages), implement ``_launch()`` and
    may override ``stop()``; ``start()`` classmethods build the instance and
    hand it to ``_start()``, which stops it again when the launch fails.
    """

    name = "service"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def cpu_seconds(self) -> float:
        """The process's CPU time so far (user + system), 0 when not running:
        what a benchmark's server spent beside the client on one machine."""
        if self._proc is None:
            return 0.0
        try:
            with open(f"/proc/{self._proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # -- starting ----------------------------------------------------------

    def _launch(self) -> None:
        raise NotImplementedError

    def _start(self) -> Self:
        """Launch; on any failure (or interrupt) stop what was started and re-raise."""
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def spawn(self, argv: Sequence[str], *, to_log: bool = True, **popen: Any) -> None:
        """Start *argv* as our process, stdout and stderr appended to the log
        (with *to_log*) or discarded; *popen* goes to subprocess.Popen.

        A file, never a pipe: nobody reads it while the tests run, and children
        that inherit it would keep a pipe open.
        """
        with ExitStack() as stack:
            out = stack.enter_context(self.log_path.open("ab")) if to_log else subprocess.DEVNULL
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, **popen
            )

    def wait_ready(
        self,
        answers: Callable[[], bool],
        timeout: float,
        what: str,
        *,
        interval: float = 0.05,
        deadline: float | None = None,
    ) -> None:
        """Poll *answers* until it is true (see wait_until).  Raise ServiceExited,
        and forget the process, if it ends first."""

        def ready() -> bool:
            if self._proc is None or self._proc.poll() is not None:
                text = self.log_tail()
                self._proc = None
                raise ServiceExited(self.name, text)
            return answers()

        wait_until(ready, timeout, what, self.log_tail, interval=interval, deadline=deadline)

    def start_on_free_ports(
        self,
        spawn: Callable[[], str],
        answers: Callable[[], bool],
        *,
        tries: int,
        timeout: float,
        interval: float = 0.05,
    ) -> None:
        """Run *spawn* until *answers*.  *spawn* picks fresh ports, starts the
        process and returns what to wait for (e.g. "sshd on 127.0.0.1:PORT",
        for the timeout message).  A free port can be taken by someone else between our probe
        and the service's bind, so a start that dies of "address already in
        use" is retried, up to *tries* times within *timeout* in all."""
        deadline = time.monotonic() + timeout
        for _ in range(tries):
            what = spawn()
            try:
                self.wait_ready(answers, timeout, what, interval=interval, deadline=deadline)
                return
            except ServiceExited as e:
                if "address already in use" not in e.log_text.lower():
                    raise
        raise RuntimeError(f"{self.name}: no free port after {tries} attempts\n{self.log_tail()}")

    # -- state and stopping ------------------------------------------------

    def log_tail(self, max_chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the log, headed by its path, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no {self.name} log: {e})"
        return f"--- {self.log_path} ---\n{text[-max_chars:]}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop_process(
        self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT
    ) -> bool:
        """Send *sig* to our process, SIGKILL it if still there after *timeout*
        seconds, and forget it (idempotent).  False if there was none to stop."""
        proc, self._proc = self._proc, None
        if proc is None:
            return False
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return True

    def stop(self) -> None:
        """Stop the service (idempotent)."""
        self.stop_process()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
