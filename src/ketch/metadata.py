"""Per-file metadata as bup 0.33.7 records it in `.bupm` (bup-format.md 3.2-3.4).

A metadata object is a run of (vuint tag, bvec payload) records closed by tag 0.
`Metadata.encode` writes exactly the records bup writes, in bup's order, so a
`.bupm` built here is byte-identical to bup's for the same file state.

Reading it from a path and applying it to one is ketch.fsmeta's (ACLs:
ketch.posixacl).
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from ketch.errors import KetchError
from ketch.vint import CorruptMetadata as CorruptMetadata  # re-exported for callers
from ketch.vint import (
    read_bvec,
    read_vint,
    read_vuint,
    write_bvec,
    write_vint,
    write_vuint,
)

EMPTY_RECORD = b"\x00"

TAG_END = 0
TAG_PATH = 1
TAG_COMMON_V1 = 2
TAG_SYMLINK_TARGET = 3
TAG_POSIX1E_ACL_V1 = 4
TAG_NFSV4_ACL = 5
TAG_LINUX_ATTR = 6
TAG_LINUX_XATTR = 7
TAG_HARDLINK_TARGET = 8
TAG_COMMON_V2 = 9
TAG_COMMON_V3 = 10
TAG_POSIX1E_ACL_V2 = 11

_NS = 10**9
_U32 = 1 << 32

class MetadataError(KetchError, OSError):
    """A path could not be examined or created.

    Also an OSError (errno, strerror and filename are kept), so a caller can
    handle it like the system error it wraps.
    """


@dataclass(slots=True)
class Metadata:
    mode: int | None = None  # full st_mode, type bits included; None = no common record
    uid: int = 0
    gid: int = 0
    user: bytes = b""
    group: bytes = b""
    rdev: int = 0
    atime: int = 0  # nanoseconds since the epoch (may be negative)
    mtime: int = 0
    ctime: int = 0
    size: int | None = None
    symlink_target: bytes | None = None
    hardlink_target: bytes | None = None
    linux_attr: int | None = None
    linux_xattr: list[tuple[bytes, bytes]] | None = None
    posix1e_acl: tuple[bytes, bytes, bytes, bytes] | None = None  # bup's 4 texts
    path: bytes | None = None

    def encode(self) -> bytes:
        """bup 0.33.7's encoding, byte for byte.

        Like bup, a record is written only when its value is truthy: mode 0,
        an empty target or xattr list, and linux_attr 0 are all left out.
        """
        out: list[bytes] = []
        if self.path:
            out += (b"\x01", write_bvec(write_bvec(self.path)))
        if self.mode:
            out += (b"\x0a", write_bvec(self._encode_common()))
        if self.symlink_target:
            out += (b"\x03", write_bvec(self.symlink_target))
        if self.hardlink_target:
            out += (b"\x08", write_bvec(self.hardlink_target))
        if self.posix1e_acl is not None:
            payload = b"".join(write_bvec(t) for t in self.posix1e_acl)
            out += (b"\x0b", write_bvec(payload))
        if self.linux_attr:
            out += (b"\x06", write_bvec(write_vuint(self.linux_attr)))
        if self.linux_xattr:
            parts = [write_vuint(len(self.linux_xattr))]
            for name, value in self.linux_xattr:
                parts += (write_bvec(name), write_bvec(value))
            out += (b"\x07", write_bvec(b"".join(parts)))
        out.append(b"\x00")
        return b"".join(out)

    def _encode_common(self) -> bytes:
        assert self.mode is not None
        vi = write_vint
        vu = write_vuint
        # Times are split floor-wise so the nanosecond half is never negative.
        asec, ans = divmod(self.atime, _NS)
        msec, mns = divmod(self.mtime, _NS)
        csec, cns = divmod(self.ctime, _NS)
        user, group = self.user, self.group
        size = self.size if self.size is not None else -1
        return b"".join(
            (vi(self.mode), vi(self.uid), vu(len(user)), user, vi(self.gid), vu(len(group)), group)
            + (vi(self.rdev), vi(asec), vu(ans), vi(msec), vu(mns), vi(csec), vu(cns), vi(size))
        )

    def is_empty(self) -> bool:
        """True when `encode` gives the bare end tag (bup's "no metadata")."""
        return not (
            self.path
            or self.mode
            or self.symlink_target
            or self.hardlink_target
            or self.posix1e_acl is not None
            or self.linux_attr
            or self.linux_xattr
        )


# ---------------------------------------------------------------------------
# Decoding


def _load_common(m: Metadata, data: bytes, version: int) -> None:
    # v1 stored mode, uid, gid and rdev as vuints; v3 added the trailing size.
    rd_id = read_vuint if version == 1 else read_vint
    m.mode, p = rd_id(data, 0)
    m.uid, p = rd_id(data, p)
    m.user, p = read_bvec(data, p)
    m.gid, p = rd_id(data, p)
    m.group, p = read_bvec(data, p)
    m.rdev, p = rd_id(data, p)
    times = []
    times_ns = []
    for _ in range(3):
        sec, p = read_vint(data, p)
        ns, p = read_vuint(data, p)
        times.append(sec * _NS + ns)
        times_ns.append(ns)
    m.atime, m.mtime, m.ctime = times
    if version == 3:
        size, p = read_vint(data, p)
        m.size = size if size >= 0 else None
    _check_common(m, times_ns)


def _check_common(m: Metadata, times_ns: list[int]) -> None:
    # Values no stat() can return: applying them would fail deep inside chmod
    # or chown with an OverflowError rather than as damaged metadata.
    assert m.mode is not None
    if not 0 <= m.mode < _U32:
        raise CorruptMetadata(f"metadata with an impossible mode {m.mode}")
    for what, v in (("uid", m.uid), ("gid", m.gid)):
        if not 0 <= v < _U32:
            raise CorruptMetadata(f"metadata with an impossible {what} {v}")
    if not 0 <= m.rdev < 1 << 64:
        raise CorruptMetadata(f"metadata with an impossible device number {m.rdev}")
    if not all(0 <= ns < _NS for ns in times_ns):
        raise CorruptMetadata("metadata with a nanosecond field of a second or more")
    _no_nul("user name", m.user)
    _no_nul("group name", m.group)


def _no_nul(what: str, value: bytes) -> bytes:
    # No name or path on Linux holds a NUL; the calls that take one refuse it
    # with a ValueError.
    if b"\0" in value:
        raise CorruptMetadata(f"metadata with a NUL byte in a {what}")
    return value


def _load_acl(data: bytes, version: int) -> tuple[bytes, bytes, bytes, bytes] | None:
    texts = []
    p = 0
    for _ in range(4):
        t, p = read_bvec(data, p)
        texts.append(t)
    if version == 1:
        # v1 was newline-delimited; bup rewrites it to commas and gives up on
        # the whole ACL if a field already held a comma.
        if any(b"," in t for t in texts):
            return None
        texts = [t.replace(b"\n", b",") for t in texts]
    if not texts[2]:
        # As bup reads it: an empty default text means no default ACL at all.
        texts[3] = b""
    return (texts[0], texts[1], texts[2], texts[3])


def _load_xattrs(data: bytes) -> list[tuple[bytes, bytes]]:
    count, p = read_vuint(data, 0)
    result = []
    for _ in range(count):
        name, p = read_bvec(data, p)
        value, p = read_bvec(data, p)
        result.append((_no_nul("xattr name", name), value))
    return result


def _apply_record(m: Metadata, tag: int, data: bytes) -> None:
    if tag == TAG_COMMON_V3:
        _load_common(m, data, 3)
    elif tag == TAG_SYMLINK_TARGET:
        m.symlink_target = _no_nul("symlink target", data)
        # As bup: records without a size (v1/v2) get it from the target.
        if m.size is None:
            m.size = len(data)
    elif tag == TAG_HARDLINK_TARGET:
        m.hardlink_target = _no_nul("hardlink target", data)
    elif tag == TAG_POSIX1E_ACL_V2:
        m.posix1e_acl = _load_acl(data, 2)
    elif tag == TAG_LINUX_ATTR:
        m.linux_attr = read_vuint(data, 0)[0]
    elif tag == TAG_LINUX_XATTR:
        m.linux_xattr = _load_xattrs(data)
    elif tag == TAG_PATH:
        m.path = read_bvec(data, 0)[0]
    elif tag == TAG_COMMON_V2:
        _load_common(m, data, 2)
    elif tag == TAG_COMMON_V1:
        _load_common(m, data, 1)
    elif tag == TAG_POSIX1E_ACL_V1:
        m.posix1e_acl = _load_acl(data, 1)
    # Anything else (tag 5, tags from newer writers) is skipped.


def decode_one(buf: bytes | memoryview, pos: int = 0) -> tuple[Metadata | None, int]:
    """Decode the metadata object at `pos`; None for an empty record ("00")."""
    tag, pos = read_vuint(buf, pos)
    if tag == TAG_END:
        return None, pos
    m = Metadata()
    while tag != TAG_END:
        data, pos = read_bvec(buf, pos)
        _apply_record(m, tag, data)
        tag, pos = read_vuint(buf, pos)
    return m, pos


def decode_all(buf: bytes | memoryview) -> list[Metadata | None]:
    """Decode a whole `.bupm` (or any concatenation of metadata objects)."""
    result = []
    pos = 0
    end = len(buf)
    while pos < end:
        m, pos = decode_one(buf, pos)
        result.append(m)
    return result


def mode_string(mode: int) -> str:
    """`ls -l` style, e.g. "-rwsr-xr-x", "drwxrwxrwt", "lrwxrwxrwx".

    Unlike bup's own listing, setuid/setgid/sticky show as s/S/t/T.
    """
    return stat.filemode(mode)
