"""The name index of an encrypted store: what ``list`` answers from.

An encrypted store hides its key names behind HMACs, which cannot be listed,
so one encrypted object maps every name to what was stored under it.  Keeping
that map (when it is read, batched, merged with someone else's and written
back) is its own idea beside the cipher format, so it lives apart from
ketch.offsite.encrypt, which describes the format and owns the keys.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable

from ketch.offsite.store import ENCRYPTED_INDEX_KEY, ObjectStore, StoreError

INDEX_KEY = ENCRYPTED_INDEX_KEY
_INDEX_NAME = "\0ketch-keys"  # in the associated data: no user key can be this
# An index entry: [plaintext size, plaintext sha256, ciphertext sha256].
_Entry = list[object]


def _good_entry(e: object) -> bool:
    """[plaintext size, plaintext sha256, ciphertext sha256], as `record` is given it."""
    return (isinstance(e, list) and len(e) == 3 and type(e[0]) is int and e[0] >= 0
            and all(isinstance(h, str) and len(h) == 64 for h in e[1:]))


class NameIndex:
    """The index of an encrypted store, kept under INDEX_KEY in `inner`.

    `encrypt` and `decrypt` are the store's own (name, bytes) ciphers: the
    index is sealed like any value, so only the key that wrote it reads it.
    `interval`: seconds between rewrites (0: after every `record`)."""

    def __init__(self, inner: ObjectStore, encrypt: Callable[[str, bytes], bytes],
                 decrypt: Callable[[str, bytes, str | None], bytes], interval: float) -> None:
        self._inner = inner
        self._encrypt = encrypt
        self._decrypt = decrypt
        self.interval = interval
        self._lock = threading.RLock()
        self._index: dict[str, _Entry] | None = None  # as last read or written
        self._index_sum: str | None = None  # what the inner store said its checksum was
        self._pending: dict[str, _Entry | None] = {}  # None: deleted
        self._last_flush = 0.0

    def _read(self) -> tuple[dict[str, _Entry], str | None]:
        st = self._inner.stat(INDEX_KEY)
        if st is None:
            return {}, None
        raw = self._decrypt(_INDEX_NAME, self._inner.get(INDEX_KEY), INDEX_KEY)
        try:
            doc = json.loads(raw)
            keys = doc["keys"]
            if doc.get("v") != 1 or not isinstance(keys, dict):
                raise ValueError("unknown layout")
            for k, e in keys.items():
                if not _good_entry(e):
                    raise ValueError(f"bad entry for {k[:100]}")
        except RecursionError:
            raise StoreError(f"{INDEX_KEY}: unreadable index (nested too deeply)") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StoreError(f"{INDEX_KEY}: unreadable index ({e})") from None
        return keys, st.checksum

    def view(self) -> dict[str, _Entry]:
        """Every name with its entry, writes not yet flushed included."""
        with self._lock:
            if self._index is None:
                self._index, self._index_sum = self._read()
            view = dict(self._index)
            for k, e in self._pending.items():
                if e is None:
                    view.pop(k, None)
                else:
                    view[k] = e
            return view

    def record(self, key: str, entry: _Entry | None) -> None:
        """`key` now holds `entry` (None: deleted)."""
        with self._lock:
            self._pending[key] = entry
            if time.monotonic() - self._last_flush >= self.interval:
                self.flush()

    def flush(self) -> None:
        """Write the index if anything changed since it was last written."""
        with self._lock:
            if not self._pending:
                return
            st = self._inner.stat(INDEX_KEY)
            current = None if st is None else st.checksum
            # Re-read unless the index is, by its digest, the one we know.
            if self._index is None or current is None or current != self._index_sum:
                self._index, _ = self._read()
            index = dict(self._index)
            for k, e in self._pending.items():
                if e is None:
                    index.pop(k, None)
                else:
                    index[k] = e
            data = json.dumps({"v": 1, "keys": index}, sort_keys=True,
                              separators=(",", ":")).encode()
            blob = self._encrypt(_INDEX_NAME, data)
            self._inner.put(INDEX_KEY, blob)
            self._index = index
            self._index_sum = hashlib.sha256(blob).hexdigest()
            self._pending.clear()
            self._last_flush = time.monotonic()

    def forked(self) -> None:
        self._lock = threading.RLock()  # held, maybe, by a thread the fork left behind
