"""CachingStore: an ObjectStore that keeps another's immutable values on local disk.

Whole values (idx files by default) are kept and their ranged reads served
locally.  Above an EncryptedStore it holds plaintext: give it a private
directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator

from ketch.offsite.store import Advance, ObjectStore, Stat

log = logging.getLogger(__name__)


class CachingStore(ObjectStore):
    """Whole values of keys ending in one of `suffixes` kept in `cache_dir`.

    Only for immutable values (idx files, packs' trees): a cached key is
    never fetched again, though put and delete through this store update the
    cache."""

    def __init__(self, inner: ObjectStore, cache_dir: str,
                 suffixes: tuple[str, ...] = (".idx",)) -> None:
        self.inner = inner
        self.cache_dir = cache_dir
        self.suffixes = suffixes
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)

    def __repr__(self) -> str:
        return f"CachingStore({self.inner!r}, {self.cache_dir!r})"

    def _path(self, key: str) -> str | None:
        if not key.endswith(self.suffixes):
            return None
        return os.path.join(self.cache_dir, hashlib.sha256(key.encode("utf-8")).hexdigest())

    def _store(self, path: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        path = self._path(key)
        if path is None:
            return self.inner.get(key, start, end)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            data = self.inner.get(key)
            try:
                self._store(path, data)
            except OSError as e:  # a full disk makes a cache miss, not a failure
                log.warning("cache %s: %s", self.cache_dir, e)
            return data[start:end]
        with f:
            f.seek(start)
            return f.read(-1 if end is None else max(end - start, 0))

    def put_file(self, key: str, path: str, *, sha256: str, storage_class: str | None = None,
                 advance: Advance | None = None) -> None:
        self._forget(key)
        self.inner.put_file(key, path, sha256=sha256, storage_class=storage_class,
                            advance=advance)

    def put(self, key: str, data: bytes) -> None:
        self._forget(key)
        self.inner.put(key, data)

    def put_file_once(self, key: str, path: str, *, sha256: str,
                      advance: Advance | None = None) -> None:
        self._forget(key)
        self.inner.put_file_once(key, path, sha256=sha256, advance=advance)

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_tagged(key)  # mutable: never cached

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        self._forget(key)
        return self.inner.put_if(key, data, tag)

    def stat(self, key: str) -> Stat | None:
        return self.inner.stat(key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._forget(key)
        self.inner.delete(key)

    def flush(self) -> None:
        self.inner.flush()

    def key_mismatch(self) -> str | None:
        return self.inner.key_mismatch()

    def forked(self) -> None:
        self.inner.forked()

    def location(self) -> str:
        return self.inner.location()

    def _forget(self, key: str) -> None:
        path = self._path(key)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
