"""Object stores as five byte operations; retry, encryption and caching wrap them
(ketch.offsite.retry, .encrypt and .cache).

Keys are `/`-separated strings relative to the store's root (a bucket and
prefix for S3, a directory for `DirStore`). Values are immutable once written,
except manifests, which are replaced whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ketch.errors import KetchError

# Called with the number of bytes moved since the last call.
Advance = Callable[[int], None]


# Where an encrypted store (ketch.offsite.encrypt) keeps its name index: the
# one key of its own in the bucket that is not a hash.
ENCRYPTED_INDEX_KEY = "ketch-keys"


class StoreError(KetchError):
    """The object store failed or refused a request."""


class NotFound(StoreError):
    """No such key."""


class StaleObject(StoreError):
    """The store holds another copy of a key than the one its own records name
    (an older one put back, or a writer cut off between the two)."""


class PreconditionFailed(StoreError):
    """A conditional write found the value changed (or present, or absent) since
    the caller read it: another writer came first."""


class NoConditionalWrites(StoreError):
    """The store cannot replace a value only if it is unchanged."""


class TransientError(StoreError):
    """A failure that may well go away: connection trouble, throttling, a 5xx.

    RetryingStore retries these and nothing else."""


@dataclass(frozen=True)
class Stat:
    size: int
    checksum: str | None = None  # a SHA-256 hex the store reported or recorded, if any


class ObjectStore(Protocol):
    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of the value (end None: to the end); NotFound if absent."""

    def put_file(self, key: str, path: str, *, sha256: str, storage_class: str | None = None,
                 advance: Advance | None = None) -> None:
        """Upload a local file (multipart and resumable where the store can);
        `sha256` is the file's digest, checked by the store or recorded with it."""

    def put(self, key: str, data: bytes) -> None:
        """Store a small value whole (manifests, refs)."""

    def put_file_once(self, key: str, path: str, *, sha256: str,
                      advance: Advance | None = None) -> None:
        """put_file for a key named by its content (a pack): created only if
        absent (S3's If-None-Match, which a bucket policy can require of every
        writer, so that no key can overwrite a pack); there already with the
        same bytes is success. A store without the condition just puts."""
        self.put_file(key, path, sha256=sha256, advance=advance)

    def stat(self, key: str) -> Stat | None: ...

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        """The whole value and its tag, which changes whenever the value is
        replaced (S3's ETag); NotFound if absent."""
        raise NoConditionalWrites(f"{self.location()}: no conditional writes")

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        """Store `data` whole only if the value is still the one tagged `tag`
        (None: only if there is none): compare-and-swap, the only way two
        writers can share a mutable key. Raises PreconditionFailed when another
        writer came first; returns the new tag."""
        raise NoConditionalWrites(f"{self.location()}: no conditional writes")

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every key under prefix, sorted by key."""

    def delete(self, key: str) -> None: ...

    def key_mismatch(self) -> str | None:
        """Why the store cannot be read or written as it was opened, with or
        without an encryption key, or None. A plain store finds an encrypted
        store's name index here; an encrypted store, plain manifests and no
        index. Wrappers pass it on."""
        try:
            if self.stat(ENCRYPTED_INDEX_KEY) is None:
                return None
        except KetchError:
            return None
        return "is encrypted: give its key (--encrypt-key FILE or $KETCH_ENCRYPT_KEY)"

    def forked(self) -> None:
        """This process was forked from the one that made the store: it makes
        connections (and locks) of its own. Wrappers pass it on."""
        return None

    def flush(self) -> None:
        """Write out what the store batches (an encrypted store's name index);
        wrappers pass it on.  Most stores write everything at once: nothing to do."""
        return None

    def location(self) -> str:
        """Where the store is, for messages and cache names; wrappers pass it on."""
        return type(self).__name__


class DirStore(ObjectStore):
    """A store in a local directory (a USB disk, an NFS mount, or tests)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def location(self) -> str:
        return self.root

    def _path(self, key: str) -> str:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise StoreError(f"bad key: {key!r}")
        return os.path.join(self.root, *parts)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                if end is None:
                    return f.read()
                # read(n) allocates n bytes first: a range past the end (a size
                # from a manifest) must not become a huge allocation.
                return f.read(max(min(end, os.fstat(f.fileno()).st_size) - start, 0))
        except FileNotFoundError:
            raise NotFound(f"{key}: not in {self.root}") from None

    def put_file(self, key: str, path: str, *, sha256: str, storage_class: str | None = None,
                 advance: Advance | None = None) -> None:
        with open(path, "rb") as src:
            self._write(key, iter(lambda: src.read(1 << 20), b""), advance)

    def put(self, key: str, data: bytes) -> None:
        self._write(key, iter([data]), None)

    def _write(self, key: str, blocks: Iterator[bytes], advance: Advance | None) -> None:
        dst = self._path(key)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = dst + ".tmp"
        with open(tmp, "wb") as f:
            for b in blocks:
                f.write(b)
                if advance is not None:
                    advance(len(b))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        path = self._path(key) + ".lock"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        with self._locked(key):
            data = self.get(key)
        return data, hashlib.sha256(data).hexdigest()

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        with self._locked(key):
            try:
                now: str | None = hashlib.sha256(self.get(key)).hexdigest()
            except NotFound:
                now = None
            if now != tag:
                raise PreconditionFailed(f"{key}: changed by another writer")
            self.put(key, data)
        return hashlib.sha256(data).hexdigest()

    def stat(self, key: str) -> Stat | None:
        try:
            return Stat(os.stat(self._path(key)).st_size)
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        out = []
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if name.endswith((".tmp", ".lock")):
                    continue
                full = os.path.join(dirpath, name)
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                if key.startswith(prefix):
                    out.append((key, os.stat(full).st_size))
        return iter(sorted(out))

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
