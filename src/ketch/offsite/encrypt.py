"""EncryptedStore: an ObjectStore that encrypts another client side.

AES-256-GCM, client side, in segments so that ranged reads still work, and
with hidden key names.  Format (version 1), all integers big-endian:

Keys.  32 random bytes of master key; HKDF-SHA256 (salt
``ketch offsite v1``) derives four subkeys by info label: ``encrypt``
(AES-256-GCM), ``names`` (HMAC-SHA256 of key names), ``nonces`` (HMAC for
nonces) and ``key id`` (8 public bytes that name the key in headers, so a
wrong key is told apart from tampering).

Names.  Key K is stored under ``hex(HMAC-SHA256(names, K))``, so the
bucket shows 64-hex-digit names only.  ``list()`` cannot run on hashed
names, so an index object (inner key ``ketch-keys``, encrypted like any
value under the reserved name ``\\0ketch-keys``) holds a JSON map
``{K: [plaintext size, plaintext sha256, ciphertext sha256]}``; ``list``
returns what the index says.  The index is rewritten after every put and
delete (``index_interval`` > 0 batches it; then call ``flush()``).  A
flush re-reads the index if someone else changed it and merges, but pushes
are meant to be single-writer per mirror: two writers flushing at the same
moment can lose each other's entries (the objects stay readable; only
``list`` misses them until they are written again).  ketch.offsite.nameindex
keeps the index.

Objects.  A 32-byte header, then segments::

    header  = "KETCHENC" | version u8 (1) | 3 zero bytes | segment size u32
              | key id (8) | plaintext size u64
    segment = nonce (12) | AES-256-GCM ciphertext of up to 64 KiB | tag (16)

Every segment but the last holds exactly ``segment size`` plaintext bytes;
an empty value still has one (empty) segment.  The sizes are public
anyway, so the plaintext size also follows from the object size.  Each
segment's associated data binds it to its place::

    ad = "ketch-enc" | version u8 | segment size u32 | len(K) u32 | K (utf-8)
         | segment index u64 | last u8 (1 for the final segment)

so segments cannot be reordered, moved between objects, or dropped from
the end without failing authentication.  Nonces are synthetic:
``HMAC-SHA256(nonces, len(K) | K | sha256(plaintext) | index)[:12]``.
Equal values under the same name encrypt to equal bytes (which is what
lets an interrupted multipart upload resume with the parts already sent),
and different values get different nonces; ``put_file`` checks the file
against the ``sha256`` it was given before anything is uploaded.  A ranged
``get`` computes which segments cover [start, end), fetches them with one
ranged get of the inner store, authenticates, decrypts and slices.  The
header is only fetched (and checked: magic, version, segment size, key
id) by reads that start in the first segment, or to explain a failure.

The key itself lives in a key file: see ketch.offsite.keyfile.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ketch.errors import KetchError
from ketch.offsite.keyfile import KEY_SIZE, KeyFileError
from ketch.offsite.nameindex import INDEX_KEY, NameIndex
from ketch.offsite.store import (
    Advance,
    NotFound,
    ObjectStore,
    StaleObject,
    Stat,
    StoreError,
)

SEGMENT_SIZE = 64 << 10
VERSION = 1
MAGIC = b"KETCHENC"
_HEADER = struct.Struct(">8sB3xI8sQ")
HEADER_SIZE = _HEADER.size  # 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE
_SALT = b"ketch offsite v1"
# The plaintext digest recorded for a value replaced by compare-and-swap (a
# primary repository's manifest): many writers replace it, and the index, which
# they share without one, may lag behind; the swap's tag vouches for it instead.
_SWAPPED = "0" * 64


class WrongKeyError(StoreError):
    """The store was encrypted with another key."""


class TamperedError(StoreError):
    """Encrypted data failed authentication: altered, truncated or misplaced."""


def _subkey(master: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=label).derive(master)


def _lp(name: str) -> bytes:
    """Length-prefixed, so that (name, rest) pairs cannot run into each other."""
    raw = name.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


class EncryptedStore(ObjectStore):
    """Client-side AES-256-GCM over `inner`; see the module doc for the format.

    `index_interval`: seconds between index rewrites (0: after every put and
    delete); with a positive value call ``flush()`` (or use ``with``) at the
    end.  `tmp_dir`: where ``put_file`` writes the ciphertext before handing
    it to the inner store (default: the system temp dir)."""

    def __init__(self, inner: ObjectStore, key: bytes, *, segment_size: int = SEGMENT_SIZE,
                 index_interval: float = 0.0, tmp_dir: str | None = None) -> None:
        if len(key) != KEY_SIZE:
            raise KeyFileError(f"an encryption key has {KEY_SIZE} bytes, not {len(key)}")
        if not 0 < segment_size < 1 << 32:
            raise ValueError(f"bad segment size {segment_size}")
        self.inner = inner
        self.segment_size = segment_size
        self.tmp_dir = tmp_dir
        self._aead = AESGCM(_subkey(key, b"encrypt"))
        self._name_key = _subkey(key, b"names")
        self._nonce_key = _subkey(key, b"nonces")
        self.key_id = _subkey(key, b"key id")[:8]
        self._ad_prefix = b"ketch-enc" + struct.pack(">BI", VERSION, segment_size)
        self._names = NameIndex(inner, self._encrypt_bytes, self._decrypt_whole, index_interval)

    def __repr__(self) -> str:
        return f"EncryptedStore({self.inner!r}, key id {self.key_id.hex()})"

    @property
    def index_interval(self) -> float:
        """The name index holds it; read and set here, as before it moved there."""
        return self._names.interval

    @index_interval.setter
    def index_interval(self, seconds: float) -> None:
        self._names.interval = seconds

    def __enter__(self) -> EncryptedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def inner_key(self, key: str) -> str:
        """The name `key` is stored under in the inner store."""
        return hmac.new(self._name_key, key.encode("utf-8"), hashlib.sha256).hexdigest()

    # -- the format ----------------------------------------------------------------

    def _header(self, plain_size: int) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, self.segment_size, self.key_id, plain_size)

    def _check_header(self, name: str, raw: bytes) -> int:
        """The plaintext size a header claims, after checking it is ours."""
        if len(raw) < HEADER_SIZE or raw[:len(MAGIC)] != MAGIC:
            raise StoreError(f"{name}: not a ketch-encrypted object")
        _, version, seg, key_id, size = _HEADER.unpack(raw[:HEADER_SIZE])
        if version != VERSION:
            raise StoreError(f"{name}: encryption format version {version} is not supported")
        if key_id != self.key_id:
            raise WrongKeyError(f"{name}: encrypted with another key (key id {key_id.hex()}, "
                                f"this key's is {self.key_id.hex()})")
        if seg != self.segment_size:
            raise StoreError(f"{name}: segment size {seg}, expected {self.segment_size}")
        if raw[:HEADER_SIZE] != self._header(size):  # the reserved bytes: not authenticated
            raise TamperedError(f"{name}: header altered")
        return int(size)

    def _ad(self, name: str, index: int, last: bool) -> bytes:
        return self._ad_prefix + _lp(name) + struct.pack(">QB", index, last)

    def _nonce(self, name: str, plain_sha: bytes, index: int) -> bytes:
        msg = _lp(name) + plain_sha + struct.pack(">Q", index)
        return hmac.new(self._nonce_key, msg, hashlib.sha256).digest()[:NONCE_SIZE]

    def _seal(self, name: str, plain_sha: bytes, index: int, last: bool, chunk: bytes) -> bytes:
        nonce = self._nonce(name, plain_sha, index)
        return nonce + self._aead.encrypt(nonce, chunk, self._ad(name, index, last))

    def _open(self, name: str, index: int, blob: bytes, last: bool | None) -> bytes:
        """Authenticate and decrypt one segment; `last` None: either is fine."""
        if len(blob) < OVERHEAD:
            raise TamperedError(f"{name}: segment {index} is truncated")
        nonce, body = blob[:NONCE_SIZE], blob[NONCE_SIZE:]
        for flag in (False, True) if last is None else (last,):
            try:
                return self._aead.decrypt(nonce, body, self._ad(name, index, flag))
            except InvalidTag:
                continue
        raise TamperedError(f"{name}: segment {index} failed authentication "
                            "(altered, truncated or moved)")

    def _encrypt_stream(self, name: str, plain_sha: bytes, read: Callable[[int], bytes],
                        write: Callable[[bytes], object]) -> tuple[int, str]:
        """Encrypt what `read` yields; (plaintext size, sha256 hex of it) back.

        The header's size field is written as 0 and patched by the caller
        when it knows the size (one read ahead tells which segment is last)."""
        seg, index, total = self.segment_size, 0, 0
        digest = hashlib.sha256()
        chunk = read(seg)
        while True:
            following = read(seg) if len(chunk) == seg else b""
            last = not following
            digest.update(chunk)
            total += len(chunk)
            write(self._seal(name, plain_sha, index, last, chunk))
            if last:
                return total, digest.hexdigest()
            chunk, index = following, index + 1

    def _encrypt_bytes(self, name: str, data: bytes) -> bytes:
        out = [self._header(len(data))]
        pos = 0

        def read(n: int) -> bytes:
            nonlocal pos
            pos += n
            return data[pos - n:pos]

        self._encrypt_stream(name, hashlib.sha256(data).digest(), read, out.append)
        return b"".join(out)

    def _decrypt_whole(self, name: str, blob: bytes, shown: str | None = None) -> bytes:
        """`name` is what the object is bound to, `shown` what messages call it."""
        try:
            return self._decrypt(name, blob)
        except StoreError as e:
            if shown is None:
                raise
            raise type(e)(str(e).replace(name, shown, 1)) from None

    def _decrypt(self, name: str, blob: bytes) -> bytes:
        size = self._check_header(name, blob)
        body = memoryview(blob)[HEADER_SIZE:]
        step = self.segment_size + OVERHEAD
        n = max(1, -(-len(body) // step))
        if self.plain_size(len(blob)) != size:
            raise TamperedError(f"{name}: {len(blob)} bytes do not hold {size} plaintext bytes")
        parts = [self._open(name, i, bytes(body[i * step:(i + 1) * step]), i == n - 1)
                 for i in range(n)]
        return b"".join(parts)

    def plain_size(self, stored: int) -> int:
        """The plaintext size of a `stored`-byte object (-1: no valid object is that big)."""
        step = self.segment_size + OVERHEAD
        full, rest = divmod(stored - HEADER_SIZE, step)
        if stored < HEADER_SIZE + OVERHEAD or (rest and rest < OVERHEAD):
            return -1
        return full * self.segment_size + (rest - OVERHEAD if rest else 0)

    # -- reads -----------------------------------------------------------------------

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        if start < 0:
            raise StoreError(f"{key}: negative offset {start}")
        hidden = self.inner_key(key)
        if end is not None and end <= start:
            if self.inner.stat(hidden) is None:
                self._not_found(key)
            return b""
        seg, step = self.segment_size, self.segment_size + OVERHEAD
        first = start // seg
        last = None if end is None else (end - 1) // seg
        # Reads from the first segment take the header too (32 bytes more) so
        # that a wrong key or a foreign object is named as such.
        lo = 0 if first == 0 else HEADER_SIZE + first * step
        hi = None if last is None else HEADER_SIZE + (last + 1) * step
        try:
            blob = self.inner.get(hidden, lo, hi)
        except NotFound:
            self._not_found(key)
        if first == 0:
            self._check_header(key, blob)
            blob = blob[HEADER_SIZE:]
            if not blob:
                raise TamperedError(f"{key}: truncated after its header")
        elif not blob:
            # Past the end, as a file read would say; unless the header says the
            # object is longer: then it was cut short.
            size = self._check_header(key, self.inner.get(hidden, 0, HEADER_SIZE))
            if start < size:
                raise TamperedError(f"{key}: truncated ({size} bytes, read from {start})")
            return b""
        # Fewer bytes than asked for: the object ends within them, so the
        # final segment must be marked last.  Else it may or may not be (an
        # object that fills its last segment exactly ends where we stopped).
        short = last is None or len(blob) < (last - first + 1) * step
        final: bool | None = True if short else None
        n = -(-len(blob) // step)
        try:
            plain = b"".join(
                self._open(key, first + i, blob[i * step:(i + 1) * step],
                           (final if i == n - 1 else False))
                for i in range(n)
            )
        except TamperedError:
            if first != 0:
                self._check_header(key, self.inner.get(hidden, 0, HEADER_SIZE))
            raise
        if start == 0 and end is None:
            self._check_current(key, plain)
        base = first * seg
        return plain[start - base: None if end is None else end - base]

    def _check_current(self, key: str, plain: bytes) -> None:
        """A whole value must be the copy the name index records: the format binds
        a ciphertext to its name, not to a version, so an older manifest put back
        under its name would authenticate."""
        entry = self._names.view().get(key)
        if entry is None or str(entry[1]) in (_SWAPPED, hashlib.sha256(plain).hexdigest()):
            return
        raise StaleObject(f"{key}: not the copy the encrypted store's index records (an older "
                          "one put back, or a push cut short: push again)")

    def _not_found(self, key: str) -> NoReturn:
        """Raise NotFound, or WrongKeyError if the index says the key is wrong."""
        try:
            self._check_header(INDEX_KEY, self.inner.get(INDEX_KEY, 0, HEADER_SIZE))
        except NotFound:
            pass
        raise NotFound(f"{key}: not in the encrypted store")

    def stat(self, key: str) -> Stat | None:
        st = self.inner.stat(self.inner_key(key))
        if st is None:
            return None
        size = self.plain_size(st.size)
        if size < 0:
            raise TamperedError(f"{key}: {st.size} bytes is no encrypted object's size")
        entry = self._names.view().get(key)
        # The plaintext digest is vouched for only while the stored bytes are
        # the ones recorded; otherwise the store's own digest goes out, so a
        # comparison with the plaintext's fails as it should.
        if entry is not None and (st.checksum is None or st.checksum == entry[2]):
            return Stat(size, str(entry[1]))
        return Stat(size, st.checksum)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """What the index says is under `prefix` (see the module doc)."""
        view = self._names.view()
        return iter(sorted((k, int(str(e[0]))) for k, e in view.items() if k.startswith(prefix)))

    # -- writes ----------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        self._names.view()  # a wrong key fails here, before anything is written
        blob = self._encrypt_bytes(key, data)
        self.inner.put(self.inner_key(key), blob)
        self._names.record(key, [len(data), hashlib.sha256(data).hexdigest(),
                                 hashlib.sha256(blob).hexdigest()])

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        try:
            blob, tag = self.inner.get_tagged(self.inner_key(key))
        except NotFound:
            self._not_found(key)
        return self._decrypt_whole(key, blob), tag

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        self._names.view()  # a wrong key fails here, before anything is written
        blob = self._encrypt_bytes(key, data)
        new = self.inner.put_if(self.inner_key(key), blob, tag)
        self._names.record(key, [len(data), _SWAPPED, hashlib.sha256(blob).hexdigest()])
        return new

    def put_file(self, key: str, path: str, *, sha256: str, storage_class: str | None = None,
                 advance: Advance | None = None) -> None:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise StoreError(f"{path}: bad sha256 {sha256!r}")
        self._names.view()  # a wrong key fails here, before anything is uploaded
        try:
            fd, tmp = tempfile.mkstemp(prefix="ketch-enc.", dir=self.tmp_dir)
        except OSError as e:
            raise StoreError(f"temporary file for {path}: {e.strerror or e}") from None
        try:
            size, cipher_sha = self._encrypt_file(key, path, fd, sha256)
            self.inner.put_file(self.inner_key(key), tmp, sha256=cipher_sha,
                                storage_class=storage_class, advance=advance)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._names.record(key, [size, sha256, cipher_sha])

    def _encrypt_file(self, key: str, path: str, fd: int, sha256: str) -> tuple[int, str]:
        """Encrypt `path` as `key` into the open temp file `fd`:
        (plaintext size, sha256 of the ciphertext)."""
        try:
            with open(path, "rb") as src, os.fdopen(fd, "w+b") as dst:
                dst.write(self._header(0))
                size, actual = self._encrypt_stream(key, bytes.fromhex(sha256), src.read,
                                                    dst.write)
                if actual != sha256:
                    # Nonces came from the claimed digest: these bytes must never leave.
                    raise StoreError(f"{path}: does not match its sha256 {sha256[:12]}… "
                                     "(changed?)")
                dst.seek(0)
                dst.write(self._header(size))
                dst.seek(0)
                digest = hashlib.sha256()
                for block in iter(lambda: dst.read(1 << 20), b""):
                    digest.update(block)
        except OSError as e:
            raise StoreError(f"{path}: {e.strerror or e}") from None
        return size, digest.hexdigest()

    def delete(self, key: str) -> None:
        self.inner.delete(self.inner_key(key))
        self._names.record(key, None)

    # -- the rest of ObjectStore --------------------------------------------------------

    def flush(self) -> None:
        """Write the index if anything changed since it was last written; then
        flush the store under this one, as every wrapper does."""
        self._names.flush()
        self.inner.flush()

    def key_mismatch(self) -> str | None:
        """A plain mirror (manifests under their names, no index) read or
        written with a key: the key's objects would sit beside it unseen."""
        try:
            if self.inner.stat(INDEX_KEY) is not None:
                return None
            # Sorted keys: a repository's manifest.json comes before its objects/.
            plain = any(k.endswith("/manifest.json") for k, _ in self.inner.list(""))
        except KetchError:
            return None
        return ("is not encrypted: leave out the key (--encrypt-key, $KETCH_ENCRYPT_KEY), "
                "or use another prefix for an encrypted mirror") if plain else None

    def forked(self) -> None:
        self._names.forked()
        self.inner.forked()

    def location(self) -> str:
        return self.inner.location()
