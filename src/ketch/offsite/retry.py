"""RetryingStore: an ObjectStore that retries the transient failures of another.

Retries TransientError (connection trouble, throttling, 5xx) and the builtin
ConnectionError/TimeoutError with exponential backoff and jitter; NotFound,
auth and every other error go straight through.  It is the only layer that
retries: S3Store has botocore try each request once.

    store = CachingStore(EncryptedStore(RetryingStore(S3Store(url)), load_key(path)), cache)
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ketch.offsite.store import Advance, ObjectStore, Stat, StoreError, TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")


class RetryingStore(ObjectStore):
    """Retry transient failures of `inner`: `attempts` tries in all, waiting
    about base_delay, 2*base_delay, 4*base_delay... (at most max_delay) with
    jitter, so that many clients throttled at once do not come back in step."""

    def __init__(self, inner: ObjectStore, attempts: int = 5, base_delay: float = 0.2, *,
                 max_delay: float = 20.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"RetryingStore({self.inner!r})"

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except (TransientError, ConnectionError, TimeoutError) as e:
                if attempt == self.attempts:
                    if isinstance(e, StoreError):
                        raise TransientError(f"{e} (tried {attempt} times)") from None
                    raise TransientError(f"{what}: {e} (tried {attempt} times)") from None
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                delay = delay / 2 + random.uniform(0, delay / 2)
                log.info("%s: %s; retrying in %.1f s (%d/%d)", what, e, delay, attempt,
                         self.attempts)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        return self._retry(key, lambda: self.inner.get(key, start, end))

    def put_file(self, key: str, path: str, *, sha256: str, storage_class: str | None = None,
                 advance: Advance | None = None) -> None:
        # A retried multipart upload resumes: the parts already sent stay.
        self._retry(key, lambda: self.inner.put_file(
            key, path, sha256=sha256, storage_class=storage_class, advance=advance))

    def put(self, key: str, data: bytes) -> None:
        self._retry(key, lambda: self.inner.put(key, data))

    def put_file_once(self, key: str, path: str, *, sha256: str,
                      advance: Advance | None = None) -> None:
        self._retry(key, lambda: self.inner.put_file_once(key, path, sha256=sha256,
                                                          advance=advance))

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        return self._retry(key, lambda: self.inner.get_tagged(key))

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        # A retry after a write that did land but whose answer was lost fails
        # its condition: the caller (a compare-and-swap loop) reads again and
        # finds its own change there.
        return self._retry(key, lambda: self.inner.put_if(key, data, tag))

    def stat(self, key: str) -> Stat | None:
        return self._retry(key, lambda: self.inner.stat(key))

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        # Whole, so that a failure half-way is retried from the start.
        return iter(self._retry(prefix + "*", lambda: [*self.inner.list(prefix)]))

    def delete(self, key: str) -> None:
        self._retry(key, lambda: self.inner.delete(key))

    def flush(self) -> None:
        self.inner.flush()

    def key_mismatch(self) -> str | None:
        return self.inner.key_mismatch()

    def forked(self) -> None:
        self.inner.forked()

    def location(self) -> str:
        return self.inner.location()
