"""Per-file metadata as bup 0.33.7 records it in `.bupm` (bup-format.md 3.2-3.4).

A metadata object is a run of (vuint tag, bvec payload) records closed by tag 0.
`Metadata.encode` writes exactly the records bup writes, in bup's order, so a
`.bupm` built here is byte-identical to bup's for the same file state.

`from_path` captures what `bup save` stores (its "normalized" from_path);
`create_special` and `apply_to_path` are the restore side.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import grp
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable
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

Warn = Callable[[str], None]

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

XATTR_ACL_ACCESS = b"system.posix_acl_access"
XATTR_ACL_DEFAULT = b"system.posix_acl_default"


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
    for _ in range(3):
        sec, p = read_vint(data, p)
        ns, p = read_vuint(data, p)
        times.append(sec * _NS + ns)
    m.atime, m.mtime, m.ctime = times
    if version == 3:
        size, p = read_vint(data, p)
        m.size = size if size >= 0 else None


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
        result.append((name, value))
    return result


def _apply_record(m: Metadata, tag: int, data: bytes) -> None:
    if tag == TAG_COMMON_V3:
        _load_common(m, data, 3)
    elif tag == TAG_SYMLINK_TARGET:
        m.symlink_target = data
        # As bup: records without a size (v1/v2) get it from the target.
        if m.size is None:
            m.size = len(data)
    elif tag == TAG_HARDLINK_TARGET:
        m.hardlink_target = data
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


# ---------------------------------------------------------------------------
# Users and groups. Cached because from_path runs once per file and NSS
# lookups can be slow (LDAP, sssd); bounded so a huge directory service can't
# grow them without limit.


@functools.lru_cache(maxsize=4096)
def _user_name(uid: int) -> bytes | None:
    try:
        return os.fsencode(pwd.getpwuid(uid).pw_name)
    except (KeyError, OverflowError):
        return None


@functools.lru_cache(maxsize=4096)
def _group_name(gid: int) -> bytes | None:
    try:
        return os.fsencode(grp.getgrgid(gid).gr_name)
    except (KeyError, OverflowError):
        return None


@functools.lru_cache(maxsize=4096)
def _uid_of(name: bytes) -> int | None:
    try:
        return pwd.getpwnam(os.fsdecode(name)).pw_uid
    except (KeyError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def _gid_of(name: bytes) -> int | None:
    try:
        return grp.getgrnam(os.fsdecode(name)).gr_gid
    except (KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------
# POSIX ACLs, converted between the kernel's xattr form and libacl's short
# text form ("u::rw-,u:alice:r--,g::r--,m::r--,o::r--") without libacl.

_ACL_USER_OBJ = 0x01
_ACL_USER = 0x02
_ACL_GROUP_OBJ = 0x04
_ACL_GROUP = 0x08
_ACL_MASK = 0x10
_ACL_OTHER = 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF
_ACL_XATTR_VERSION = 2
_ACL_ENTRY = struct.Struct("<HHI")
# A header plus the three entries every ACL has: anything longer is extended.
_ACL_BASE_SIZE = 4 + 3 * _ACL_ENTRY.size

_ACL_TAG_LETTER = {
    _ACL_USER_OBJ: b"u",
    _ACL_USER: b"u",
    _ACL_GROUP_OBJ: b"g",
    _ACL_GROUP: b"g",
    _ACL_MASK: b"m",
    _ACL_OTHER: b"o",
}
_ACL_NAMED = {b"u": _ACL_USER, b"g": _ACL_GROUP}
_ACL_UNNAMED = {b"u": _ACL_USER_OBJ, b"g": _ACL_GROUP_OBJ, b"m": _ACL_MASK, b"o": _ACL_OTHER}
# libacl writes these as \ooo in user and group names, and a backslash as two.
_ACL_QUOTED = frozenset(b":, \t\n\r")

AclEntry = tuple[int, int, int]  # tag, perm bits (r=4 w=2 x=1), id


def _acl_entries(blob: bytes) -> list[AclEntry] | None:
    if len(blob) < 4 or (len(blob) - 4) % _ACL_ENTRY.size:
        return None
    if struct.unpack_from("<I", blob)[0] != _ACL_XATTR_VERSION:
        return None
    entries = [_ACL_ENTRY.unpack_from(blob, p) for p in range(4, len(blob), _ACL_ENTRY.size)]
    # libacl keeps entries ordered by tag, then id; its text follows that order.
    entries.sort(key=lambda e: (e[0], e[2]))
    return entries


def _acl_from_mode(mode: int) -> list[AclEntry]:
    return [
        (_ACL_USER_OBJ, (mode >> 6) & 7, _ACL_UNDEFINED_ID),
        (_ACL_GROUP_OBJ, (mode >> 3) & 7, _ACL_UNDEFINED_ID),
        (_ACL_OTHER, mode & 7, _ACL_UNDEFINED_ID),
    ]


def _acl_quote(name: bytes) -> bytes:
    if not _ACL_QUOTED.intersection(name) and b"\\" not in name:
        return name
    out = bytearray()
    for c in name:
        out += b"\\%03o" % c if c in _ACL_QUOTED else b"\\\\" if c == 0x5C else bytes((c,))
    return bytes(out)


def _acl_unquote(text: bytes) -> bytes:
    if b"\\" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i : i + 2] == b"\\\\":
            out.append(0x5C)
            i += 2
        elif text[i] == 0x5C and len(text[i + 1 : i + 4]) == 3 and text[i + 1 : i + 4].isdigit():
            out.append(int(text[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            out.append(text[i])
            i += 1
    return bytes(out)


def _acl_text(entries: list[AclEntry], numeric: bool) -> bytes:
    parts = []
    for tag, perm, qid in entries:
        qual = b""
        if tag in (_ACL_USER, _ACL_GROUP):
            name = None
            if not numeric:
                name = _user_name(qid) if tag == _ACL_USER else _group_name(qid)
            qual = _acl_quote(name) if name is not None else b"%d" % qid
        rwx = (
            (b"r" if perm & 4 else b"-")
            + (b"w" if perm & 2 else b"-")
            + (b"x" if perm & 1 else b"-")
        )
        parts.append(b"%s:%s:%s" % (_ACL_TAG_LETTER.get(tag, b"?"), qual, rwx))
    return b",".join(parts)


def _acl_record(mode: int, xattrs: dict[bytes, bytes]) -> tuple[bytes, bytes, bytes, bytes] | None:
    """bup's ACL record (tag 11), or None when the ACL is just the mode bits."""
    access = xattrs.get(XATTR_ACL_ACCESS)
    default = xattrs.get(XATTR_ACL_DEFAULT) if stat.S_ISDIR(mode) else None
    # Same test as libacl's acl_extended_file(), which bup relies on.
    if not (
        (access is not None and len(access) > _ACL_BASE_SIZE)
        or (default is not None and len(default) >= _ACL_BASE_SIZE)
    ):
        return None
    acc = _acl_entries(access) if access is not None else _acl_from_mode(mode)
    if acc is None:
        return None
    dflt = _acl_entries(default) if default is not None else []
    dflt = dflt or []
    return (
        _acl_text(acc, False),
        _acl_text(acc, True),
        _acl_text(dflt, False),
        _acl_text(dflt, True),
    )


def _parse_acl_text(text: bytes) -> list[tuple[bytes, bytes, int]]:
    """(kind u/g/m/o, qualifier, perm) per entry; ValueError on bad text."""
    result = []
    for item in text.replace(b"\n", b",").split(b","):
        item = item.split(b"#", 1)[0].strip()
        if item:
            kind, qual, perms = item.split(b":")
            # Long words ("user", "mask") abbreviate to their first letter.
            kind = kind.strip()[:1]
            if kind not in (b"u", b"g", b"m", b"o") or perms.strip(b"rwx-"):
                raise ValueError(f"bad ACL entry {item.decode('utf-8', 'backslashreplace')}")
            perm = (
                (4 if b"r" in perms else 0)
                | (2 if b"w" in perms else 0)
                | (1 if b"x" in perms else 0)
            )
            result.append((kind, _acl_unquote(qual.strip()), perm))
    return result


def _acl_blob(named: bytes, numeric: bytes, use_names: bool) -> bytes:
    """Kernel xattr form of an ACL from bup's text pair.

    Names are resolved locally when asked and possible; otherwise the id
    from the numeric text (which lines up entry for entry) is used.
    """
    nums = _parse_acl_text(numeric)
    names = _parse_acl_text(named) if use_names else nums
    if len(names) != len(nums):
        names = nums
    entries: list[AclEntry] = []
    for (kind, qual, perm), (_, num_qual, _) in zip(names, nums, strict=True):
        if kind in (b"u", b"g") and qual:
            qid: int | None = None
            if use_names and not qual.isdigit():
                qid = _uid_of(qual) if kind == b"u" else _gid_of(qual)
            entries.append((_ACL_NAMED[kind], perm, int(num_qual) if qid is None else qid))
        else:
            entries.append((_ACL_UNNAMED[kind], perm, _ACL_UNDEFINED_ID))
    entries.sort(key=lambda e: (e[0], e[2]))
    return struct.pack("<I", _ACL_XATTR_VERSION) + b"".join(_ACL_ENTRY.pack(*e) for e in entries)


# ---------------------------------------------------------------------------
# Linux inode flags (lsattr/chattr)

_LONG = struct.calcsize("l")
FS_IOC_GETFLAGS = (2 << 30) | (_LONG << 16) | (ord("f") << 8) | 1
FS_IOC_SETFLAGS = (1 << 30) | (_LONG << 16) | (ord("f") << 8) | 2
FS_EXTENT_FL = 0x00080000
# What chattr can change (acdeijstuADST and C); bup masks restores with the same set.
_SETTABLE_FLAGS = 0x008BC0FF
_FLAG_ERRNOS_UNSUPPORTED = (errno.ENOTTY, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


def _open_for_flags(path: bytes) -> int:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
    try:
        return os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        # O_NOATIME is refused on files we don't own.
        return os.open(path, flags)


def _get_linux_attr(path: bytes, warn: Warn | None) -> int | None:
    try:
        fd = _open_for_flags(path)
    except OSError as e:
        _warn(warn, f"{os.fsdecode(path)}: cannot read Linux attrs: {e.strerror}")
        return None
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
    except OSError as e:
        if e.errno not in _FLAG_ERRNOS_UNSUPPORTED:
            _warn(warn, f"{os.fsdecode(path)}: cannot read Linux attrs: {e.strerror}")
        return None
    finally:
        os.close(fd)
    # The kernel writes an int; the request number merely claims a long.
    flags: int = struct.unpack_from("=I", buf)[0]
    return flags or None


def _set_linux_attr(path: bytes, attr: int, warn: Warn | None) -> None:
    try:
        fd = _open_for_flags(path)
    except OSError as e:
        _warn(warn, f"{os.fsdecode(path)}: cannot restore Linux attrs: {e.strerror}")
        return
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        current = struct.unpack_from("=I", buf)[0]
        # The extents flag can be neither cleared nor set by hand; keep
        # whatever the new file has, as bup does.
        wanted = (attr & _SETTABLE_FLAGS & ~FS_EXTENT_FL) | (current & FS_EXTENT_FL)
        if wanted != current:
            struct.pack_into("=I", buf, 0, wanted)
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, buf, False)
    except OSError as e:
        if e.errno not in (errno.ENOTTY, errno.EOPNOTSUPP):
            _warn(warn, f"{os.fsdecode(path)}: cannot restore Linux attrs {attr:#x}: {e.strerror}")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Reading a path


def _warn(warn: Warn | None, msg: str) -> None:
    if warn is not None:
        warn(msg)


def _read_xattrs(path: bytes, warn: Warn | None) -> list[tuple[bytes, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.ENOSYS):
            _warn(warn, f"{os.fsdecode(path)}: cannot list xattrs: {e.strerror}")
        return []
    result = []
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as e:
            # ENODATA: removed since the listing.
            if e.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                _warn(warn, f"{os.fsdecode(path)}: cannot read xattr {name}: {e.strerror}")
            continue
        result.append((os.fsencode(name), value))
    return result


def from_path(
    path: bytes,
    st: os.stat_result | None = None,
    *,
    hardlink_target: bytes | None = None,
    warn: Warn | None = None,
) -> Metadata:
    """What `bup save` records for `path` (bup's from_path, normalized=True).

    `size` is st_size for regular files (the caller may replace it with the
    byte count actually read), len(target) for symlinks, else None. Raises
    MetadataError when `path` can't be lstat'ed; other problems go to `warn`.
    """
    if st is None:
        try:
            st = os.lstat(path)
        except OSError as e:
            raise MetadataError(e.errno, e.strerror, path) from e
    mode = st.st_mode
    fmt = stat.S_IFMT(mode)
    uid, gid = st.st_uid, st.st_gid
    m = Metadata(
        mode=mode,
        uid=uid,
        gid=gid,
        user=_user_name(uid) or b"",
        group=_group_name(gid) or b"",
        rdev=st.st_rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0,
        atime=st.st_atime_ns,
        mtime=st.st_mtime_ns,
        ctime=st.st_ctime_ns,
        hardlink_target=hardlink_target,
    )
    if fmt == stat.S_IFREG:
        m.size = st.st_size
    elif fmt == stat.S_IFLNK:
        m.size = st.st_size
        try:
            m.symlink_target = os.readlink(path)
            # The link may have been replaced since the lstat.
            m.size = len(m.symlink_target)
        except OSError as e:
            _warn(warn, f"{os.fsdecode(path)}: readlink: {e.strerror}")
    xattrs = _read_xattrs(path, warn)
    if fmt != stat.S_IFLNK and xattrs:
        m.posix1e_acl = _acl_record(mode, dict(xattrs))
    if fmt in (stat.S_IFREG, stat.S_IFDIR):
        m.linux_attr = _get_linux_attr(path, warn)
    if xattrs:
        m.linux_xattr = xattrs
    return m


# ---------------------------------------------------------------------------
# Restoring


def create_special(meta: Metadata, path: bytes) -> None:
    """Create a non-regular file of meta's type; `apply_to_path` comes after.

    Directories are made 0700 so the restore can fill them whatever the
    recorded mode. Raises MetadataError (an OSError) on failure.
    """
    mode = meta.mode or 0
    fmt = stat.S_IFMT(mode)
    try:
        if fmt == stat.S_IFDIR:
            os.mkdir(path, 0o700)
        elif fmt == stat.S_IFLNK:
            if meta.symlink_target is None:
                raise MetadataError(errno.EINVAL, "symlink without a recorded target", path)
            os.symlink(meta.symlink_target, path)
        elif fmt == stat.S_IFIFO:
            os.mkfifo(path, 0o600)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            os.mknod(path, 0o600 | fmt, meta.rdev)
        elif fmt == stat.S_IFSOCK:
            _create_socket(path)
        else:
            what = "a regular file" if fmt == stat.S_IFREG else f"mode {mode:#o}"
            raise MetadataError(errno.EINVAL, f"create_special cannot make {what}", path)
    except MetadataError:
        raise
    except OSError as e:
        raise MetadataError(e.errno, e.strerror, path) from e


def _create_socket(path: bytes) -> None:
    # mknod makes a socket inode directly and has no sun_path length limit;
    # binding is the fallback bup uses where mknod is refused.
    try:
        os.mknod(path, 0o600 | stat.S_IFSOCK)
        return
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EPERM):
            raise
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)


def _restore_owner(meta: Metadata, path: bytes, numeric_ids: bool, warn: Warn | None) -> None:
    uid = gid = -1
    if os.geteuid() == 0:
        uid, gid = meta.uid, meta.gid
        # Like bup, id 0 is never remapped by name.
        if not numeric_ids:
            local_uid = _uid_of(meta.user) if meta.uid != 0 and meta.user else None
            local_gid = _gid_of(meta.group) if meta.gid != 0 and meta.group else None
            uid = uid if local_uid is None else local_uid
            gid = gid if local_gid is None else local_gid
    else:
        # Not root: only a group we belong to can be set; anything else is
        # skipped quietly, as bup does.
        groups = set(os.getgroups())
        if meta.gid in groups:
            gid = meta.gid
        if not numeric_ids and meta.gid != 0 and meta.group:
            local = _gid_of(meta.group)
            if local is not None and local in groups:
                gid = local
    if uid == -1 and gid == -1:
        return
    try:
        os.chown(path, uid, gid, follow_symlinks=False)
    except OSError as e:
        _warn(warn, f"{os.fsdecode(path)}: lchown {uid}:{gid}: {e.strerror}")


def _restore_xattrs(meta: Metadata, path: bytes, existing: list[bytes], warn: Warn | None) -> None:
    wanted = dict(meta.linux_xattr or ())
    if meta.posix1e_acl is not None:
        # The ACL record is authoritative; the raw copy in the xattrs is skipped.
        wanted.pop(XATTR_ACL_ACCESS, None)
        wanted.pop(XATTR_ACL_DEFAULT, None)
    for name, value in wanted.items():
        try:
            if name in existing and os.getxattr(path, name, follow_symlinks=False) == value:
                continue
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError as e:
            _warn(warn, f"{os.fsdecode(path)}: cannot set xattr {os.fsdecode(name)}: {e.strerror}")
    for name in existing:
        if name in wanted or (
            meta.posix1e_acl is not None and name.startswith(b"system.posix_acl_")
        ):
            continue
        try:
            os.removexattr(path, name, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.ENODATA:
                _warn(
                    warn,
                    f"{os.fsdecode(path)}: cannot remove xattr {os.fsdecode(name)}: {e.strerror}",
                )


def _acl_shown(text: bytes) -> str:
    # The ACL's text form (u::rwx,g::r-x,...), never Python's b'...'.
    return text.decode("utf-8", "backslashreplace").replace("\n", ",")


def _restore_acl(meta: Metadata, path: bytes, numeric_ids: bool, warn: Warn | None) -> None:
    acl = meta.posix1e_acl
    if acl is None:
        return
    is_dir = stat.S_ISDIR(meta.mode or 0)
    todo = [(XATTR_ACL_ACCESS, acl[0], acl[1])]
    if is_dir:
        todo.append((XATTR_ACL_DEFAULT, acl[2], acl[3]))
    for name, named, numeric in todo:
        try:
            if numeric or named:
                blob = _acl_blob(named, numeric, not numeric_ids)
                os.setxattr(path, name, blob, follow_symlinks=False)
            else:
                os.removexattr(path, name, follow_symlinks=False)
        except (ValueError, KeyError):
            _warn(warn, f"{os.fsdecode(path)}: unreadable ACL {_acl_shown(numeric)}")
        except OSError as e:
            if e.errno != errno.ENODATA:
                _warn(warn, f"{os.fsdecode(path)}: cannot set ACL "
                            f"{_acl_shown(numeric)}: {e.strerror}")


def apply_to_path(
    meta: Metadata,
    path: bytes,
    *,
    numeric_ids: bool = False,
    warn: Warn | None = None,
) -> None:
    """Restore meta onto an existing path.

    Order: owner (chown clears setuid bits, so before the mode), mode,
    xattrs, ACL, times, then Linux attrs: an immutable or append-only flag
    would block the utime, and setting flags leaves atime and mtime alone.
    Raises MetadataError only when `path` is missing; the rest goes to `warn`.
    """
    try:
        on_disk = os.lstat(path).st_mode
    except OSError as e:
        raise MetadataError(e.errno, e.strerror, path) from e
    mode = meta.mode
    if not mode:
        _warn(warn, f"{os.fsdecode(path)}: no metadata recorded; nothing applied")
        return
    if stat.S_IFMT(mode) not in _KNOWN_TYPES:
        _warn(warn, f"{os.fsdecode(path)}: not applying metadata with unknown mode {mode:#o}")
        return
    if stat.S_IFMT(on_disk) != stat.S_IFMT(mode):
        # chmod and friends would act on whatever is there now, e.g. through
        # a symlink planted where a file was expected.
        kinds = f"{mode_string(on_disk)[0]!r} on disk, {mode_string(mode)[0]!r} recorded"
        _warn(warn, f"{os.fsdecode(path)}: file type differs ({kinds}); nothing applied")
        return
    is_link = stat.S_ISLNK(mode)
    _restore_owner(meta, path, numeric_ids, warn)
    if not is_link:
        try:
            os.chmod(path, stat.S_IMODE(mode))
        except OSError as e:
            _warn(warn, f"{os.fsdecode(path)}: chmod {stat.S_IMODE(mode):o}: {e.strerror}")
    try:
        existing = [os.fsencode(n) for n in os.listxattr(path, follow_symlinks=False)]
    except OSError as e:
        existing = []
        if meta.linux_xattr:
            _warn(warn, f"{os.fsdecode(path)}: cannot list xattrs: {e.strerror}")
    if meta.linux_xattr or existing:
        _restore_xattrs(meta, path, existing, warn)
    if not is_link:
        _restore_acl(meta, path, numeric_ids, warn)
    try:
        os.utime(path, ns=(meta.atime, meta.mtime), follow_symlinks=False)
    except OSError as e:
        _warn(warn, f"{os.fsdecode(path)}: cannot set times: {e.strerror}")
    if meta.linux_attr and stat.S_IFMT(mode) in (stat.S_IFREG, stat.S_IFDIR):
        _set_linux_attr(path, meta.linux_attr, warn)


# Regular, directory, symlink, char, block, fifo, socket.
_KNOWN_TYPES = frozenset((0o100000, 0o040000, 0o120000, 0o020000, 0o060000, 0o010000, 0o140000))


def mode_string(mode: int) -> str:
    """`ls -l` style, e.g. "-rwsr-xr-x", "drwxrwxrwt", "lrwxrwxrwx".

    Unlike bup's own listing, setuid/setgid/sticky show as s/S/t/T.
    """
    return stat.filemode(mode)
