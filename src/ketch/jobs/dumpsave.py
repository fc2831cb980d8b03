"""Streams of dump bytes -> one save, with no copy of the data on disk.

The mechanics under `ketch.jobs.dumps` (which knows the databases): each
`Source` is a process whose stdout is the data (or, for SQLite, bytes made in
memory); its bytes are hashsplit as they arrive and the chunks go straight into
the repository's pack writer.  The save's tree is laid out as `ketch save
--strip` lays out a directory holding those files (bup-format.md 2):

    /                  one tree, the commit's
      .bupm            a directory record, then one record per file (by name):
                       regular file 0600, the running user, mtime = the dump's end
      app.sql          a blob, or `app.sql.bup` (a chunk tree) when it splits
      globals.sql

    for each source:
        start it; read stdout in 8 MiB blocks (a reader thread keeps the pipe
        drained while the main thread splits); stderr -> a bounded tail
        exit status != 0, a signal, or no completion marker near the end
            -> abort the writer, raise DumpFailed (the branch does not move)
    write .bupm and the root tree, the commit; close the writer; move the branch

Chunking is exactly `ketch save`'s for a file of the same bytes (bup's 8 MiB
read blocks, fanout 16), so a dump that also exists as a file dedups with it.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import queue
import re
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from ketch import split as hs
from ketch.buptree import mangle, write_dir_tree
from ketch.commits import argv_message
from ketch.errors import KetchError
from ketch.git import objects as gobj
from ketch.git.refs import validate_branch_name
from ketch.metadata import Metadata
from ketch.progress import NullProgress, Progress
from ketch.repo import ObjectWriter, WritableRepository
from ketch.snapshot import write_snapshot

# Read blocks of bup's size: the same bytes then chunk exactly as a saved file.
BLOCK = hs.READ_SIZE
# Blocks read ahead of the splitter: the dump keeps running while a block is
# split and compressed, at a bounded cost (4 x 8 MiB).
_READ_AHEAD = 4
# A bigger pipe lets the dump write in fewer, larger pieces while we split
# (Linux caps unprivileged sizes at /proc/sys/fs/pipe-max-size, 1 MiB).
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
# How much of a tool's stderr is kept (its end: that is where the error is).
STDERR_KEEP = 8192
# How much of the stream's end is kept to look for the completion marker.
TAIL_KEEP = 4096
_STOP_TIMEOUT = 10.0
_STRAGGLER_WAIT = 2.0


class DumpFailed(KetchError):
    """A database dump failed; nothing was recorded for it (exit code 2)."""


@dataclass
class DumpResult:
    name: str  # the branch
    commit: bytes | None  # None if nothing was recorded
    files: list[tuple[str, int]]  # (file name in the save, bytes)
    bytes_read: int  # total dump bytes
    bytes_new: int  # bytes of new objects written to the repository
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "commit": self.commit.hex() if self.commit else None,
                "files": [{"name": n, "bytes": b} for n, b in self.files],
                "bytes_read": self.bytes_read, "bytes_new": self.bytes_new,
                "seconds": round(self.seconds, 3), "warnings": self.warnings}


@dataclass
class Source:
    """One file of a dump save.

    Either `argv` (a process whose stdout is the data) or `produce` (bytes made
    in this process, e.g. SQLite's online backup).  `what` names it in
    messages ("mysqldump of database app").  `done_marker`: bytes the tool
    writes at the very end of a complete dump; without them near the end the
    stream counts as truncated.  `stderr_warns`: stderr output of a successful
    run becomes a warning (for tools that are silent when all is well)."""

    filename: str
    what: str
    argv: list[str] | None = None
    env: dict[str, str] | None = None
    user: str | None = None
    cwd: str | None = None
    done_marker: bytes | None = None
    stderr_warns: bool = False
    produce: Callable[[], bytes] | None = None


# -- secrets kept out of messages ---------------------------------------------------

_SECRET_PATTERNS = (
    # password=..., --password=..., "password": ..., PGPASSWORD=..., MYSQL_PWD=...
    # (not mysql's "using password: YES")
    re.compile(r"(?i)((?:pass(?:word|wd)?|pwd|secret|token)[\"']?\s*[=:]\s*)"
               r"(?!(?:YES|NO)\b)(\"[^\"]*\"|'[^']*'|\S+)"),
    # scheme://user:password@host
    re.compile(r"(://[^:/@\s]*:)([^@\s]+)(@)"),
    # mysql's -pSECRET (a whole word)
    re.compile(r"(?<!\S)(-p)(\S+)"),
)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with known secret values and anything that looks like a password
    replaced by ***."""
    for s in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
        text = text.replace(s, "***")
    for rx in _SECRET_PATTERNS:
        text = rx.sub(lambda m: m.group(1) + "***" + (m.group(3) if m.lastindex == 3 else ""),
                      text)
    return text


def tail_lines(data: bytes, n: int = 2) -> str:
    """The last `n` non-empty lines of a tool's stderr, joined into one line."""
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


# -- reading a process --------------------------------------------------------------


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


def read_full_blocks(f: Readable, size: int = BLOCK) -> Iterator[bytes]:
    """`size`-byte blocks of `f` (a pipe: short reads are filled up); only the
    last may be shorter, as `split.read_blocks` (and so bup) reads a file."""
    while True:
        buf = bytearray(size)
        mv = memoryview(buf)
        have = 0
        while have < size:
            n = f.readinto(mv[have:])
            if not n:
                break
            have += n
        mv.release()
        if have == 0:
            return
        if have < size:
            yield bytes(buf[:have])
            return
        yield bytes(buf)


class _StderrTail(threading.Thread):
    """Drains a pipe, keeping only its last STDERR_KEEP bytes: a chatty tool can
    neither block on a full pipe nor fill memory, and nothing reaches the terminal."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__(daemon=True, name="dump-stderr")
        self._f = f
        self.data = b""

    def run(self) -> None:
        try:
            while chunk := self._f.read(65536):
                self.data = (self.data + chunk)[-STDERR_KEEP:]
        except (OSError, ValueError):
            pass


_EOF = object()


class _ProcessStream:
    """A running dump process: its stdout as read-ahead blocks, its stderr tail.

    It runs in its own session (process group), so stopping it also stops
    whatever it started (a `sh -c` pipeline) and cannot leave our reader
    blocked on a pipe that a grandchild still holds open."""

    def __init__(self, src: Source) -> None:
        assert src.argv is not None
        try:
            self.proc = subprocess.Popen(
                src.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=src.env, user=src.user, cwd=src.cwd,
                bufsize=0, start_new_session=True)
        except (OSError, subprocess.SubprocessError) as e:
            raise DumpFailed(f"cannot start {src.argv[0]}: {e}") from None
        assert self.proc.stdout is not None and self.proc.stderr is not None
        try:
            fcntl.fcntl(self.proc.stdout.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
        except OSError:
            pass  # only a speed-up
        self.stderr = _StderrTail(self.proc.stderr)  # type: ignore[arg-type]
        self.stderr.start()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=_READ_AHEAD)
        self.read_error: OSError | None = None
        self._reader = threading.Thread(target=self._read, daemon=True, name="dump-stdout")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            # bufsize=0: stdout is the raw pipe (a FileIO), read without a buffer copy.
            for block in read_full_blocks(self.proc.stdout):  # type: ignore[arg-type]
                self._queue.put(block)
        except (OSError, ValueError) as e:
            self.read_error = e if isinstance(e, OSError) else OSError(str(e))
        self._queue.put(_EOF)

    def blocks(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is _EOF:
                return
            assert isinstance(item, bytes)
            yield item

    def wait(self) -> int:
        """The exit status once stdout is done (negative: killed by that signal)."""
        code = self.proc.wait()
        self.stderr.join(_STRAGGLER_WAIT)
        if self.stderr.is_alive():
            # Something the dump started in the background still holds stderr:
            # the dump is over, so its leftovers are stopped, not waited for.
            self._killpg()
            self.stderr.join(_STRAGGLER_WAIT)
        self._close_pipes()
        return code

    def _killpg(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            if self.proc.poll() is None:
                self.proc.kill()

    def kill(self) -> None:
        """Stop the process group and the threads (after a failure on our side)."""
        self._killpg()
        # Unblock the reader if it waits on a full queue; it then sees EOF.
        deadline = time.monotonic() + _STOP_TIMEOUT
        while self._reader.is_alive() and time.monotonic() < deadline:
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        try:
            self.proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        self.stderr.join(1.0)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None and not self._reader.is_alive():
                try:
                    f.close()
                except OSError:
                    pass


def exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


# -- the save ---------------------------------------------------------------------------


def _record(mode: int, now_ns: int, size: int | None) -> Metadata:
    uid, gid = os.getuid(), os.getgid()
    try:
        user = os.fsencode(pwd.getpwuid(uid).pw_name)
    except KeyError:
        user = b""
    try:
        group = os.fsencode(grp.getgrgid(gid).gr_name)
    except KeyError:
        group = b""
    return Metadata(mode=mode, uid=uid, gid=gid, user=user, group=group,
                    atime=now_ns, mtime=now_ns, ctime=now_ns, size=size)


class DumpWriter:
    """Files streamed into one write session, then the save's tree and commit."""

    def __init__(self, w: ObjectWriter, progress: Progress, secrets: Iterable[str],
                 date: float | None, label: str) -> None:
        self.w = w
        self.progress = progress
        self.secrets = list(secrets)
        self.date = date
        self.label = label
        self.files: list[tuple[str, int]] = []
        self.warnings: list[str] = []
        self._entries: list[gobj.TreeEntry] = []
        self._records: list[tuple[bytes, bytes]] = []

    def _now_ns(self) -> int:
        # A --date given to the run makes the whole save reproducible.
        return int(self.date * 1e9) if self.date is not None else time.time_ns()

    def _store(self, blocks: Iterable[bytes | memoryview]) -> tuple[int, bytes, int, bytes]:
        """Split and store a stream: (git mode, oid, size, its last TAIL_KEEP bytes)."""
        sp = hs.Splitter(4)
        tree = hs.ChunkTree(self.w)
        size = 0
        tail = b""
        for block in blocks:
            size += len(block)
            self.progress.advance(len(block))
            tail = (tail + bytes(block[-TAIL_KEEP:]))[-TAIL_KEEP:]
            self._add(tree, list(sp.feed(block)))  # type: ignore[arg-type]
        self._add(tree, list(sp.finish()))
        mode, oid = hs.top_object(self.w, tree.top())
        return mode, oid, size, tail

    def _add(self, tree: hs.ChunkTree, chunks: list[hs.Chunk]) -> None:
        if not chunks:
            return
        oids = self.w.write_many(gobj.BLOB, [c for c, _ in chunks])
        for oid, (c, level) in zip(oids, chunks, strict=True):
            tree.add(gobj.MODE_FILE, oid, len(c), level)

    def fail(self, what: str, reason: str, stderr: bytes = b"") -> DumpFailed:
        msg = f"dump {self.label}: {what} failed: {reason}"
        said = tail_lines(stderr)
        if said:
            msg += f": {said}"
        return DumpFailed(scrub(msg, self.secrets))

    def add(self, src: Source) -> None:
        """Stream one source into the repository and record it; DumpFailed if the
        dump failed or was cut short."""
        if src.produce is not None:
            data = src.produce()
            view = memoryview(data)
            mode, oid, size, _ = self._store(view[i : i + BLOCK]
                                             for i in range(0, len(data), BLOCK))
        else:
            mode, oid, size = self._from_process(src)
        name = os.fsencode(src.filename)
        self._entries.append(gobj.TreeEntry(mode, mangle(name, mode == gobj.MODE_TREE), oid))
        record = _record(stat.S_IFREG | 0o600, self._now_ns(), size)
        self._records.append((name, record.encode()))
        self.files.append((src.filename, size))
        self.progress.advance(0, 1)

    def _from_process(self, src: Source) -> tuple[int, bytes, int]:
        ps = _ProcessStream(src)
        try:
            mode, oid, size, tail = self._store(ps.blocks())
            code = ps.wait()
        except BaseException:
            ps.kill()
            raise
        err = ps.stderr.data
        if ps.read_error is not None:
            raise self.fail(src.what, f"reading its output: {ps.read_error}", err)
        if code != 0:
            raise self.fail(src.what, exit_reason(code), err)
        if src.done_marker is not None and src.done_marker not in tail:
            marker = src.done_marker.strip().decode(errors="replace")
            raise self.fail(src.what, f"the dump is truncated (after {size} bytes, "
                                      f"no final {marker!r} line)", err)
        said = tail_lines(err)
        if src.stderr_warns and said:
            self.warnings.append(scrub(f"dump {self.label}: {src.what}: {said}", self.secrets))
        return mode, oid, size

    def tree(self) -> bytes:
        """The save's root tree: the files and the .bupm describing them."""
        dir_record = _record(stat.S_IFDIR | 0o700, self._now_ns(), None).encode()
        return write_dir_tree(self.w, dir_record, self._entries, self._records)


def unique_filename(name: str, taken: set[str]) -> str:
    """A tree-safe file name (no '/', NUL, '.' or '..') not in `taken`; adds it."""
    safe = name.replace("/", "_").replace("\0", "_")
    if safe in ("", ".", ".."):
        safe = "_" + safe
    out = safe
    n = 2
    while out in taken:
        out = f"{safe}~{n}"
        n += 1
    taken.add(out)
    return out


def save_sources(repo: WritableRepository, name: str, sources: Iterable[Source], *,
                 level: int = 1, progress: Progress | None = None, date: float | None = None,
                 secrets: Iterable[str] = (), label: str | None = None) -> DumpResult:
    """Stream `sources` (consumed lazily, in order) into one save on branch `name`.

    On any failure the write session is aborted and the branch is left alone.
    `label` names the dump in messages (default: the branch)."""
    progress = progress or NullProgress()
    t0 = time.monotonic()
    validate_branch_name(name.encode())
    progress.start(None)
    dw: DumpWriter | None = None

    def build(w: ObjectWriter) -> bytes | None:
        nonlocal dw
        dw = DumpWriter(w, progress, secrets, date, label or name)
        for src in sources:
            dw.add(src)
        return dw.tree() if dw.files else None

    try:
        snap = write_snapshot(repo, name, build,
                              message=argv_message("ketch dump", ["ketch", "run", name]),
                              reflog=b"ketch dump", date=date, progress=progress, level=level)
    except BaseException:
        progress.finish()
        raise
    assert dw is not None
    if snap.commit is None:
        dw.warnings.append(f"dump {dw.label}: nothing to dump; no save recorded")
    return DumpResult(name=name, commit=snap.commit, files=list(dw.files),
                      bytes_read=sum(n for _, n in dw.files), bytes_new=snap.bytes_new,
                      seconds=time.monotonic() - t0, warnings=list(dw.warnings))
