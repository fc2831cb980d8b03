"""A mysqldump loaded by several clients at once: a drill's MariaDB load.

One `mariadb` client loading a dump is bound by the server's one thread for
that connection (~5 MB/s of SQL on the benchmark machine); tables of a dump are independent, so
each table's section goes whole to one of several clients, and the server's
threads run in parallel.

mysqldump writes a comment line before each section, and no line of a
statement starts with `-- ` (rows start with `(` or `INSERT`; a newline inside
a value is written `\\n`), so a line starting with `-- ` is always a comment,
and these comments are markers:

- `-- Table structure for table` starts a table: structure, rows, triggers.
  Sections of one phase go to whichever client has the least queued.
- Any other marker that starts a section (`-- Current Database:`, events,
  routines, the final view structure) is a barrier: every client finishes
  first, then that section runs alone, so a database exists before its tables
  load and views find the tables they name.

Each client is fed from its own spool file (unlinked, in the scratch
directory; at most SPOOL_LIMIT bytes ahead of the clients in all), so the
splitter reads on to the next table while earlier ones still load.

The text before the first marker (session settings: character set, foreign
key and unique checks, SQL mode, time zone) is sent to every client first,
and the last `USE` seen to every client of a later phase.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterable, Iterator

TABLE = b"-- Table structure for table "
_BARRIERS = (b"-- Current Database: ", b"-- Dumping events for database ",
             b"-- Dumping routines for database ", b"-- Final view structure for view ")
_USE = re.compile(rb"^USE `[^`\n]*`;$", re.M)
_BLOCK = 1 << 20
# Spooled ahead of the clients, at most: what lets a later table start while an
# earlier one still loads, in the scratch directory rather than in memory.
SPOOL_LIMIT = 1 << 30


def sections(blocks: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    """("head" | "table" | "barrier", bytes) in order; a new section starts
    with its marker line, the bytes of one section may come in several pieces."""
    kind, rest = "head", b""
    for block in blocks:
        data = rest + block
        cut = data.rfind(b"\n") + 1  # whole lines only: a marker may span blocks
        rest, data = data[cut:], data[:cut]
        start = 0
        for m in re.finditer(rb"^-- [^\n]*\n", data, re.M):
            line = m.group()
            nxt = ("table" if line.startswith(TABLE)
                   else "barrier" if line.startswith(_BARRIERS) else None)
            if nxt is None:
                continue
            if m.start() > start:
                yield kind, data[start:m.start()]
            kind, start = nxt, m.start()
            yield kind, b""  # a section starts, even if its bytes come later
        if start < len(data):
            yield kind, data[start:]
    if rest:
        yield kind, rest


class _Budget:
    """Bytes spooled for the clients and not yet sent to them, across all."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self.cv = threading.Condition()

    def take(self, n: int) -> None:
        with self.cv:
            # Waits only on clients whose sections are whole (the splitter is
            # past them), so they drain without it.
            while self.used and self.used + n > self.limit:
                self.cv.wait()
            self.used += n

    def give(self, n: int) -> None:
        with self.cv:
            self.used -= n
            self.cv.notify_all()


class _Client:
    """One client process, fed from a spool file in the scratch directory: the
    splitter moves on to the next table while this one is still loading."""

    def __init__(self, argv: list[str], env: dict[str, str] | None, path: str,
                 budget: _Budget, first: bytes) -> None:
        self.errlog = path + ".err"
        self.err = open(self.errlog, "wb")  # noqa: SIM115 - closed in finish()
        # Unbuffered: a statement left in a buffer would keep its table locked
        # while this client waits for more, and another client waits for it.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=self.err, env=env, bufsize=0)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.unlink(path)  # nothing to clean up, however the drill ends
        self.budget = budget
        self.written = self.sent = 0
        self.closed = False
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()
        self.put(first)

    @property
    def queued(self) -> int:
        return self.written - self.sent

    def _next(self) -> bytes:
        with self.cv:
            while self.sent == self.written and not self.closed:
                self.cv.wait()
            n = min(_BLOCK, self.written - self.sent)
            return os.pread(self.fd, n, self.sent) if n else b""

    def _feed(self) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        broken = False
        while block := self._next():
            if not broken:
                try:
                    stdin.write(block)
                except OSError:
                    broken = True  # its errors are in its log; the spool still drains
            with self.cv:
                self.sent += len(block)
            self.budget.give(len(block))
        try:
            stdin.close()
        except OSError:
            pass

    def put(self, block: bytes) -> None:
        if block:
            self.budget.take(len(block))
            with self.cv:
                os.pwrite(self.fd, block, self.written)
                self.written += len(block)
                self.cv.notify()

    def _close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()

    def finish(self) -> tuple[int, str]:
        self._close()
        self.thread.join()
        code = self.proc.wait()
        self.err.close()
        os.close(self.fd)
        return code, self.errlog

    def kill(self) -> None:
        self.proc.kill()
        self._close()
        self.thread.join()
        self.proc.wait()
        self.err.close()
        os.close(self.fd)


def load(blocks: Iterable[bytes], argv: list[str], env: dict[str, str] | None,
         workdir: str, workers: int | None = None) -> list[tuple[int, str]]:
    """Load a mysqldump through up to `workers` clients (default: one per CPU,
    at most 4); (exit status, stderr file) of every client run."""
    n = workers or max(1, min(4, os.cpu_count() or 1))
    head, use = b"", b""
    clients: list[_Client] = []
    done: list[tuple[int, str]] = []
    current: _Client | None = None
    alone = False  # the running section is a barrier's
    runs = 0
    budget = _Budget(SPOOL_LIMIT)

    def spawn() -> _Client:
        nonlocal runs
        runs += 1
        c = _Client(argv, env, os.path.join(workdir, f"client-{runs}"), budget, head + use)
        clients.append(c)
        return c

    def drain() -> None:
        while clients:
            done.append(clients.pop().finish())

    try:
        for kind, data in sections(blocks):
            if kind == "head":
                head += data
            elif not data and kind == "barrier":  # a barrier starts: the rest first
                drain()
                current, alone = spawn(), True
            elif not data:  # a table starts
                if alone:
                    drain()
                    alone = False
                current = spawn() if len(clients) < n else min(clients, key=lambda c: c.queued)
            else:
                if kind == "barrier" and (found := _USE.findall(data)):
                    use = found[-1] + b"\n"
                assert current is not None  # sections() starts each with b""
                current.put(data)
        if current is None and head.strip():  # no section at all: one client
            spawn()
        drain()
    except BaseException:
        for c in clients:
            c.kill()
        raise
    return done
