"""Refs of a bare repository, moved only by compare-and-swap.

A ref is a loose file ``<git_dir>/<name>`` holding 40 hex digits (or ``ref: <name>``
for a symref) or, failing that, a line of ``packed-refs``. Updates follow git's
own lock protocol so that ketch, bup and git can run side by side:

  create <name>.lock with O_EXCL   (exists: someone else is updating; give up)
  re-read the ref; it must still equal the expected old value
  write the new value to the lock, fsync, append the reflog, rename over the ref

Deleting a packed ref also rewrites ``packed-refs`` under ``packed-refs.lock``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator

from ketch.errors import KetchError, RefConflict
from ketch.git import reflog
from ketch.git.config import GitConfig
from ketch.git.durable import fsync_dir
from ketch.git.objects import tz_offset

# Callers import the name rules from here too (they were born in this module).
from ketch.git.refnames import BadRefName as BadRefName
from ketch.git.refnames import branch_name_problem as branch_name_problem
from ketch.git.refnames import check_ref_name as check_ref_name
from ketch.git.refnames import ref_name_problem, shown_name
from ketch.git.refnames import validate_branch_name as validate_branch_name

ZERO_ID = b"\0" * 20
ZERO_HEX = b"0" * 40
DEFAULT_IDENT = b"ketch <ketch@localhost>"
# git gives up on symref chains longer than this (SYMREF_MAXDEPTH).
MAX_SYMREF_DEPTH = 5
# How long a writer waits for another's ref lock before giving up (git waits
# 1 s for packed-refs): gc holds a ref's lock while it rewrites its reflog.
LOCK_WAIT = 1.0

_HEX40 = re.compile(rb"[0-9a-f]{40}\Z")
_TRUE = frozenset(("true", "yes", "on", "1", ""))
_LOGGED_PREFIXES = (b"refs/heads/", b"refs/remotes/", b"refs/notes/")


class BadRefValue(KetchError):
    """A ref update was given something that is not a 20-byte object id."""


class CorruptRef(KetchError):
    """A ref file or packed-refs line could not be parsed."""


def _parse_packed(text: bytes) -> dict[bytes, bytes]:
    refs: dict[bytes, bytes] = {}
    for line in text.splitlines():
        if not line or line[:1] in (b"#", b"^"):
            continue  # header, or the peeled target of the tag line above
        hexid, sp, name = line.partition(b" ")
        if not sp or not _HEX40.match(hexid):
            raise CorruptRef(f"packed-refs: unparseable line: {shown_name(line[:100])}")
        refs[name] = bytes.fromhex(hexid.decode())
    return refs


def _reflog_message(message: bytes) -> bytes:
    # git folds whitespace runs (newlines included) to one space so each reflog
    # entry stays one line.
    return b" ".join(message.split())




def _check_id(what: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != 20:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise BadRefValue(f"{what} must be a raw 20-byte object id, got {got}")


class Refs:
    """The refs of the repository at ``git_dir``."""

    def __init__(self, git_dir: str | os.PathLike[str]) -> None:
        self.git_dir = os.fspath(git_dir)
        self._dir = os.fsencode(self.git_dir)

    def _path(self, name: bytes) -> bytes:
        return os.path.join(self._dir, name)

    # -- reading --------------------------------------------------------------

    def _read_loose(self, name: bytes) -> bytes | None:
        """The stripped content of a loose ref file, or None."""
        try:
            with open(self._path(name), "rb") as f:
                content = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return content.rstrip(b"\n")

    def _packed(self) -> dict[bytes, bytes]:
        try:
            with open(self._path(b"packed-refs"), "rb") as f:
                return _parse_packed(f.read())
        except FileNotFoundError:
            return {}

    def _direct(self, name: bytes) -> tuple[bytes | None, bytes | None]:
        """(oid, symref target) of ``name`` without following symrefs; both None if absent."""
        content = self._read_loose(name)
        if content is None:
            return self._packed().get(name), None
        if content.startswith(b"ref: "):
            target = content[5:].strip()
            check_ref_name(target, allow_pseudo=True)
            return None, target
        if not _HEX40.match(content):
            raise CorruptRef(f"ref {name.decode(errors='replace')}: bad content {content[:60]!r}")
        return bytes.fromhex(content.decode()), None

    def read(self, name: bytes) -> bytes | None:
        """The raw id ``name`` points to (following symrefs), or None."""
        check_ref_name(name, allow_pseudo=True)
        for _ in range(MAX_SYMREF_DEPTH + 1):
            oid, target = self._direct(name)
            if target is None:
                return oid
            name = target
        raise CorruptRef(f"symref chain from {shown_name(name)} is too long (a loop?)")

    def read_symref(self, name: bytes) -> bytes | None:
        """The ref name that symref ``name`` points to, or None if it is not a symref."""
        check_ref_name(name, allow_pseudo=True)
        content = self._read_loose(name)
        if content is None or not content.startswith(b"ref: "):
            return None
        return content[5:].strip()

    def _iter_loose_names(self) -> Iterator[bytes]:
        root = self._path(b"refs")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self._dir)
            for fn in filenames:
                name = os.path.join(rel, fn)
                if fn.endswith(b".lock") or ref_name_problem(name[5:]):
                    continue  # git's own lock files and stray junk are not refs
                yield name

    def iter_refs(self, prefix: bytes = b"refs/") -> Iterator[tuple[bytes, bytes]]:
        """(name, oid) of every ref starting with ``prefix``, loose over packed, by name."""
        found: dict[bytes, bytes] = {}
        for name, oid in self._packed().items():
            if name.startswith(prefix):
                found[name] = oid
        for name in self._iter_loose_names():
            if not name.startswith(prefix):
                continue
            value, target = self._direct(name)
            if target is not None:
                value = self.read(target)  # e.g. refs/remotes/origin/HEAD
            if value is None:
                found.pop(name, None)  # dangling symref, or deleted while we looked
            else:
                found[name] = value
        yield from sorted(found.items())

    # -- locking --------------------------------------------------------------

    def _take_lock(self, name: bytes, path: bytes) -> tuple[int, bytes]:
        lock = path + b".lock"
        # A concurrent delete may prune the parent directory between makedirs and
        # open, so retry a few times, as git does.
        for _ in range(10):
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except (FileExistsError, NotADirectoryError) as e:
                raise RefConflict(
                    f"cannot update ref {name.decode(errors='replace')}: "
                    "an existing ref is in the way of its directory"
                ) from e
            try:
                fd = self._open_lock(lock)
            except FileExistsError as e:
                raise RefConflict(
                    f"cannot lock ref {name.decode(errors='replace')}: "
                    f"{lock.decode(errors='replace')} exists; another process is updating "
                    "it, or a crashed one left the lock behind"
                ) from e
            except FileNotFoundError:
                continue
            return fd, lock
        raise RefConflict(f"cannot lock ref {name.decode(errors='replace')}: directory vanished")

    @staticmethod
    def _open_lock(lock: bytes) -> int:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                return os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                if reflog.remove_if_stale(lock):
                    continue  # left by a gc killed while it expired this reflog
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _check_df_conflict(self, name: bytes) -> None:
        """git refuses refs/heads/a when refs/heads/a/b exists, and vice versa."""
        if os.path.isdir(self._path(name)):
            raise RefConflict(f"cannot create {name.decode(errors='replace')}: refs exist below it")
        packed = self._packed()
        below = name + b"/"
        parts = name.split(b"/")
        above = {b"/".join(parts[:i]) for i in range(2, len(parts))}
        for other in packed:
            if other.startswith(below) or other in above:
                raise RefConflict(
                    f"cannot create {name.decode(errors='replace')}: "
                    f"it conflicts with {other.decode(errors='replace')}"
                )

    # -- reflog ---------------------------------------------------------------

    def _log_mode(self) -> str:
        config = GitConfig(os.path.join(self.git_dir, "config"))
        value = config.get("core", "logAllRefUpdates")
        if value is None:
            # git's default: log in work trees, not in bare repositories.
            return "false" if config.get_bool("core", "bare") else "true"
        return value.strip().lower()

    def _should_log(self, name: bytes, mode: str) -> bool:
        if os.path.isfile(self._path(b"logs/" + name)):
            return True  # git appends to an existing reflog whatever the config says
        if mode == "always":
            return True
        if mode in _TRUE:
            return name == b"HEAD" or name.startswith(_LOGGED_PREFIXES)
        return False

    def _append_reflog(self, name: bytes, line: bytes) -> None:
        path = self._path(b"logs/" + name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            # A single write: with O_APPEND, concurrent writers' lines stay whole.
            os.write(fd, line)
        finally:
            os.close(fd)

    def _write_reflogs(
        self,
        name: bytes,
        old: bytes | None,
        new: bytes,
        ident: bytes,
        when: int | None,
        tz: bytes | None,
        message: bytes,
    ) -> None:
        mode = self._log_mode()
        # git also logs a branch's moves in HEAD's reflog while HEAD points at it.
        names = [name]
        if self.read_symref(b"HEAD") == name:
            names.append(b"HEAD")
        names = [n for n in names if self._should_log(n, mode)]
        if not names:
            return
        if when is None:
            when = int(time.time())
        if tz is None:
            tz = tz_offset(time.localtime(when).tm_gmtoff)
        line = b"%s %s %s %d %s" % (
            old.hex().encode() if old else ZERO_HEX,
            new.hex().encode(),
            ident,
            when,
            tz,
        )
        msg = _reflog_message(message)
        line += (b"\t" + msg if msg else b"") + b"\n"
        for n in names:
            self._append_reflog(n, line)

    def expire_reflog(self, name: bytes, gone: Callable[[bytes], bool],
                      hook: Callable[[], None] | None = None) -> int:
        """Drop the lines of ``name``'s reflog whose old or new id is ``gone``, under
        the ref's lock (see ketch.git.reflog); returns how many went. ``hook``
        runs while the lock is held (the crash tests kill there)."""
        path = self._path(name)
        lock = path + b".lock"
        deadline = time.monotonic() + LOCK_WAIT
        while (fd := reflog.take_expiry_lock(lock)) is None:
            if time.monotonic() >= deadline:
                raise RefConflict(f"cannot lock ref {shown_name(name)} to expire its reflog: "
                                  f"{shown_name(lock)} exists")
            time.sleep(0.01)
        try:
            log = self._path(b"logs/" + name)
            try:
                with open(log, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                return 0
            kept, dropped = reflog.filter_reflog(data, gone)
            if dropped:
                reflog.replace_log(log, kept)
            if hook is not None:
                hook()
            return dropped
        finally:
            reflog.release_expiry_lock(lock, fd)

    # -- updates --------------------------------------------------------------

    def update(
        self,
        name: bytes,
        new: bytes,
        old: bytes | None,
        *,
        ident: bytes = DEFAULT_IDENT,
        message: bytes = b"",
        when: int | None = None,
        tz: bytes | None = None,
    ) -> None:
        """Point ``name`` at ``new`` if it currently points at ``old``.

        ``old=None`` means the ref must not exist yet. Raises RefConflict when the
        ref has moved, or is locked by someone else.
        """
        check_ref_name(name)
        _check_id("new", new)
        if old == ZERO_ID:
            old = None
        if old is not None:
            _check_id("old", old)
        if new == ZERO_ID:
            raise BadRefValue("cannot set a ref to the null id; delete it instead")
        path = self._path(name)
        fd, lock = self._take_lock(name, path)
        renamed = False
        try:
            self._expect(name, old)
            if old is None:
                self._check_df_conflict(name)
            _write_all(fd, new.hex().encode() + b"\n")
            os.fsync(fd)
            os.close(fd)
            fd = -1
            self._write_reflogs(name, old, new, ident, when, tz, message)
            os.rename(lock, path)
            renamed = True
            fsync_dir(os.path.dirname(path))
        finally:
            if fd >= 0:
                os.close(fd)
            if not renamed:
                _unlink_quietly(lock)

    def _expect(self, name: bytes, old: bytes | None) -> None:
        """The compare of compare-and-swap, under the ref's lock."""
        current, target = self._direct(name)
        if target is not None:
            raise RefConflict(f"{name.decode(errors='replace')} is a symbolic ref")
        if current != old:
            raise RefConflict(
                f"ref {name.decode(errors='replace')} is at "
                f"{current.hex() if current else '(none)'}, "
                f"expected {old.hex() if old else '(none)'}"
            )

    def delete(self, name: bytes, old: bytes) -> None:
        """Delete ``name`` (loose, packed and its reflog) if it points at ``old``."""
        check_ref_name(name)
        _check_id("old", old)
        path = self._path(name)
        fd, lock = self._take_lock(name, path)
        try:
            self._expect(name, old)
            # Packed entry first: were the loose file removed first, a reader could
            # briefly see the stale packed value come back.
            if name in self._packed():
                self._remove_packed(name)
            _unlink_quietly(path)
            _unlink_quietly(self._path(b"logs/" + name))
        finally:
            os.close(fd)
            _unlink_quietly(lock)
        self._prune_dirs(name)

    def _remove_packed(self, name: bytes) -> None:
        path = self._path(b"packed-refs")
        fd, lock = self._take_lock(b"packed-refs", path)
        renamed = False
        try:
            with open(path, "rb") as f:
                lines = f.read().splitlines(keepends=True)
            kept: list[bytes] = []
            skipping = False
            for line in lines:
                if not line.startswith(b"^"):
                    # A "^" line peels the tag on the line before it and goes with it.
                    skipping = (
                        not line.startswith(b"#")
                        and line.rstrip(b"\r\n").partition(b" ")[2] == name
                    )
                if not skipping:
                    kept.append(line)
            _write_all(fd, b"".join(kept))
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.rename(lock, path)
            renamed = True
            fsync_dir(self._dir)
        finally:
            if fd >= 0:
                os.close(fd)
            if not renamed:
                _unlink_quietly(lock)

    def _prune_dirs(self, name: bytes) -> None:
        # Drop directories the deleted ref leaves empty, below refs/<kind>/ only
        # (git keeps refs/heads and refs/tags themselves).
        parts = name.split(b"/")
        for depth in range(len(parts) - 1, 2, -1):
            for top in (b"", b"logs/"):
                try:
                    os.rmdir(self._path(top + b"/".join(parts[:depth])))
                except OSError:
                    pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink_quietly(path: bytes) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
