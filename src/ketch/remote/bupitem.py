"""bup 0.33's VFS items (its namedtuples) and their wire form in `resolve`
(bup-format.md 6.4): what ketch.remote.bupvfs sends and reads.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ketch.errors import KetchError
from ketch.metadata import Metadata, decode_one
from ketch.vfs import DEFAULT_DIR_MODE
from ketch.vint import write_bvec, write_vint, write_vuint

# Caps on what one request may make us read, so a hostile client cannot make
# the server allocate without bound; real paths and records are far smaller.
MAX_FIELD = 1 << 24
MAX_RESOLUTION = 1 << 16

# Field order of bup's namedtuples, for their reprs in error messages.
FIELDS: dict[str, tuple[str, ...]] = {
    "Item": ("meta", "oid"),
    "Chunky": ("meta", "oid"),
    "FakeLink": ("meta", "target"),
    "Root": ("meta",),
    "Tags": ("meta",),
    "RevList": ("meta", "oid"),
    "Commit": ("meta", "oid", "coid"),
}
_WITH_OID = frozenset({"Item", "Chunky", "RevList", "Commit"})


class ResolveError(KetchError):
    """A resolve request is malformed, or asks for something bup itself would
    fail on (bup's server dies on these; ketch reports them instead)."""


@dataclass(frozen=True, slots=True)
class BupItem:
    """One of bup's VFS namedtuples; `kind` is the namedtuple's class name.

    `meta` is a Metadata, or a bare st_mode when there is none (bup's
    `has_meta` 0). `oid` is the tree for `Commit` (whose commit is `coid`),
    the commit for `RevList`, and absent for `Root`, `Tags` and `FakeLink`.
    """

    kind: str
    meta: Metadata | int
    oid: bytes | None = None
    coid: bytes | None = None
    target: bytes | None = None

    @property
    def mode(self) -> int:
        if isinstance(self.meta, Metadata):
            return self.meta.mode or 0
        return self.meta

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


Resolution = list[tuple[bytes, BupItem | None]]

ROOT_ITEM = BupItem("Root", DEFAULT_DIR_MODE)
TAGS_ITEM = BupItem("Tags", DEFAULT_DIR_MODE)


class BupIOError(Exception):
    """bup's `vfs.IOError`: sent to the client as an ioerror, not a failure."""

    def __init__(self, err: int, message: str, terminus: Resolution | None = None) -> None:
        super().__init__(err, message)
        self.errno = err
        self.message = message
        self.terminus = terminus


# -- the wire -----------------------------------------------------------------


def _meta_bytes(meta: Metadata) -> bytes:
    # bup writes items' metadata with include_path=False.
    if meta.path is not None:
        meta = dataclasses.replace(meta, path=None)
    return meta.encode()


def encode_item(item: BupItem) -> bytes:
    """bup's `vfs.write_item`."""
    has_meta = isinstance(item.meta, Metadata)
    out = [write_bvec(item.kind.encode("ascii")), write_vuint(1 if has_meta else 0)]
    if item.kind in _WITH_OID:
        assert item.oid is not None
        out.append(write_bvec(item.oid))
        if item.kind == "Commit":
            assert item.coid is not None
            out.append(write_bvec(item.coid))
    elif item.kind == "FakeLink":
        assert item.target is not None
        out.append(write_bvec(item.target))
    if isinstance(item.meta, Metadata):
        out.append(_meta_bytes(item.meta))
    else:
        out.append(write_vuint(item.meta))
    return b"".join(out)


def encode_resolution(resolution: Sequence[tuple[bytes, BupItem | None]]) -> bytes:
    """bup's `vfs.write_resolution`: a count, then name and optional item each."""
    out = [write_vuint(len(resolution))]
    for name, item in resolution:
        out.append(write_bvec(name))
        out.append(b"\x00" if item is None else b"\x01" + encode_item(item))
    return b"".join(out)


def encode_ioerror(e: BupIOError) -> bytes:
    """bup's `vfs.write_ioerror`; errno and message are always present here."""
    mask = 1 | 2 | (4 if e.terminus is not None else 0)
    out = [write_vuint(mask), write_vint(e.errno), write_bvec(e.message.encode("utf-8"))]
    if e.terminus is not None:
        out.append(encode_resolution(e.terminus))
    return b"".join(out)


class Reader:
    """bup's vint readers over a `read(n) -> exactly n bytes` function."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read

    def take(self, n: int) -> bytes:
        if n == 0:
            return b""
        data = self._read(n)
        if len(data) != n:
            raise ResolveError("resolve request truncated")
        return data

    def byte(self) -> int:
        return self.take(1)[0]

    def vuint(self) -> int:
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 63:
                raise ResolveError("resolve request has an overlong vuint")

    def bvec(self, what: str) -> bytes:
        n = self.vuint()
        if n > MAX_FIELD:
            raise ResolveError(f"resolve request {what} is too long ({n} bytes)")
        return self.take(n)

    def oid(self, what: str) -> bytes:
        oid = self.bvec(what)
        if len(oid) != 20:
            raise ResolveError(f"resolve request {what} is {len(oid)} bytes, not 20")
        return oid

    def meta(self) -> Metadata:
        # Collect the record stream up to its end tag, then decode it whole.
        raw = bytearray()
        while True:
            tag = self.vuint()
            raw += write_vuint(tag)
            if tag == 0:
                break
            raw += write_bvec(self.bvec("metadata record"))
        meta, _ = decode_one(bytes(raw))
        if meta is None:
            # bup reads this as meta None and then fails on it (item_mode,
            # write_item), so it can only come from a confused client.
            raise ResolveError("resolve request has an empty metadata record")
        return meta

    def item(self) -> BupItem:
        """bup's `vfs.read_item`."""
        kind_b = self.bvec("item kind")
        kind = kind_b.decode("ascii", "replace")
        if kind not in FIELDS:
            raise ResolveError(f"resolve request has an unknown item kind {kind_b!r}")
        has_meta = self.vuint()
        oid = coid = target = None
        if kind in _WITH_OID:
            oid = self.oid(f"{kind} oid")
            if kind == "Commit":
                coid = self.oid("Commit coid")
        elif kind == "FakeLink":
            target = self.bvec("FakeLink target")
        meta: Metadata | int = self.meta() if has_meta else self.vuint()
        return BupItem(kind, meta, oid, coid, target)

    def resolution(self) -> Resolution:
        """bup's `vfs.read_resolution`."""
        n = self.vuint()
        if n > MAX_RESOLUTION:
            raise ResolveError(f"resolve request parent has too many elements ({n})")
        out: Resolution = []
        for _ in range(n):
            name = self.bvec("name")
            present = self.byte()
            if present not in (0, 1):
                raise ResolveError(f"resolve request has a bad item-present byte {present}")
            out.append((name, self.item() if present else None))
        return out


def read_resolution(read: Callable[[int], bytes]) -> Resolution:
    """Decode a resolution from `read(n)`, as bup's `vfs.read_resolution` does."""
    return Reader(read).resolution()
