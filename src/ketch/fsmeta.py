"""Per-file metadata read from and applied to paths.

`from_path` captures what `bup save` stores (its "normalized" from_path);
`create_special` and `apply_to_path` are the restore side.  The record itself
(encoding, decoding) is ketch.metadata's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Callable

from ketch.idmap import gid_of, group_name, uid_of, user_name
from ketch.metadata import Metadata, MetadataError, mode_string
from ketch.posixacl import XATTR_ACL_ACCESS, XATTR_ACL_DEFAULT, acl_blob, acl_record

Warn = Callable[[str], None]


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


def _get_linux_attr(path: bytes, warn: Warn | None, open_fd: int | None = None) -> int | None:
    try:
        fd = _open_for_flags(path) if open_fd is None else open_fd
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
        if open_fd is None:
            os.close(fd)
    # The kernel writes an int; the request number merely claims a long.
    flags: int = struct.unpack_from("=I", buf)[0]
    return flags or None


def _set_linux_attr(path: bytes, attr: int, warn: Warn | None, open_fd: int | None = None
                    ) -> None:
    try:
        fd = _open_for_flags(path) if open_fd is None else open_fd
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
        if open_fd is None:
            os.close(fd)


# ---------------------------------------------------------------------------
# Reading a path


def _warn(warn: Warn | None, msg: str) -> None:
    if warn is not None:
        warn(msg)


def _read_xattrs(path: bytes, warn: Warn | None, fd: int | None = None) -> list[tuple[bytes, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False) if fd is None else os.listxattr(fd)
    except OSError as e:
        if e.errno not in (errno.ENOTSUP, errno.ENOSYS):
            _warn(warn, f"{os.fsdecode(path)}: cannot list xattrs: {e.strerror}")
        return []
    result = []
    for name in names:
        try:
            value = (os.getxattr(path, name, follow_symlinks=False) if fd is None
                     else os.getxattr(fd, name))
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
    fd: int | None = None,
) -> Metadata:
    """What `bup save` records for `path` (bup's from_path, normalized=True).

    `fd`: the file, open (a save reading it anyway): its attributes are read
    through it, without looking the path up again.

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
        user=user_name(uid) or b"",
        group=group_name(gid) or b"",
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
    xattrs = _read_xattrs(path, warn, fd)
    if fmt != stat.S_IFLNK and xattrs:
        m.posix1e_acl = acl_record(mode, dict(xattrs))
    if fmt in (stat.S_IFREG, stat.S_IFDIR):
        m.linux_attr = _get_linux_attr(path, warn, fd)
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


# Where metadata is applied: a path (not followed if a symlink) or a descriptor.
Target = bytes | int


def _follow(target: Target) -> bool:
    # A path is never followed; os refuses follow_symlinks=False with a
    # descriptor, which follows nothing anyway.
    return isinstance(target, int)


def _restore_owner(meta: Metadata, target: Target, path: bytes, numeric_ids: bool,
                   warn: Warn | None) -> None:
    uid = gid = -1
    if os.geteuid() == 0:
        uid, gid = meta.uid, meta.gid
        # Like bup, id 0 is never remapped by name.
        if not numeric_ids:
            local_uid = uid_of(meta.user) if meta.uid != 0 and meta.user else None
            local_gid = gid_of(meta.group) if meta.gid != 0 and meta.group else None
            uid = uid if local_uid is None else local_uid
            gid = gid if local_gid is None else local_gid
    else:
        # Not root: only a group we belong to can be set; anything else is
        # skipped quietly, as bup does.
        groups = set(os.getgroups())
        if meta.gid in groups:
            gid = meta.gid
        if not numeric_ids and meta.gid != 0 and meta.group:
            local = gid_of(meta.group)
            if local is not None and local in groups:
                gid = local
    if uid == -1 and gid == -1:
        return
    try:
        os.chown(target, uid, gid, follow_symlinks=_follow(target))
    except OSError as e:
        _warn(warn, f"{os.fsdecode(path)}: lchown {uid}:{gid}: {e.strerror}")


def _restore_xattrs(meta: Metadata, target: Target, path: bytes, existing: list[bytes],
                    warn: Warn | None) -> None:
    follow = _follow(target)
    wanted = dict(meta.linux_xattr or ())
    if meta.posix1e_acl is not None:
        # The ACL record is authoritative; the raw copy in the xattrs is skipped.
        wanted.pop(XATTR_ACL_ACCESS, None)
        wanted.pop(XATTR_ACL_DEFAULT, None)
    for name, value in wanted.items():
        try:
            if name in existing and os.getxattr(target, name, follow_symlinks=follow) == value:
                continue
            os.setxattr(target, name, value, follow_symlinks=follow)
        except OSError as e:
            _warn(warn, f"{os.fsdecode(path)}: cannot set xattr {os.fsdecode(name)}: {e.strerror}")
    for name in existing:
        if name in wanted or (
            meta.posix1e_acl is not None and name.startswith(b"system.posix_acl_")
        ):
            continue
        try:
            os.removexattr(target, name, follow_symlinks=follow)
        except OSError as e:
            if e.errno != errno.ENODATA:
                _warn(
                    warn,
                    f"{os.fsdecode(path)}: cannot remove xattr {os.fsdecode(name)}: {e.strerror}",
                )


def _acl_shown(text: bytes) -> str:
    # The ACL's text form (u::rwx,g::r-x,...), never Python's b'...'.
    return text.decode("utf-8", "backslashreplace").replace("\n", ",")


def _restore_acl(meta: Metadata, target: Target, path: bytes, numeric_ids: bool,
                 warn: Warn | None) -> None:
    acl = meta.posix1e_acl
    if acl is None:
        return
    follow = _follow(target)
    is_dir = stat.S_ISDIR(meta.mode or 0)
    todo = [(XATTR_ACL_ACCESS, acl[0], acl[1])]
    if is_dir:
        todo.append((XATTR_ACL_DEFAULT, acl[2], acl[3]))
    for name, named, numeric in todo:
        try:
            if numeric or named:
                blob = acl_blob(named, numeric, not numeric_ids)
                os.setxattr(target, name, blob, follow_symlinks=follow)
            else:
                os.removexattr(target, name, follow_symlinks=follow)
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
    _apply(meta, path, path, numeric_ids, warn)


def apply_to_fd(
    meta: Metadata,
    fd: int,
    path: bytes,
    *,
    numeric_ids: bool = False,
    warn: Warn | None = None,
) -> None:
    """apply_to_path for a regular file a restore created and still holds open
    as `fd`: the same order, through the descriptor, so neither a lookup of
    `path` per call nor an open for the Linux attrs is paid per file.
    `path` only names it in warnings."""
    if meta.mode is None or not stat.S_ISREG(meta.mode):
        _warn(warn, f"{os.fsdecode(path)}: not applying metadata of a "
                    f"{mode_string(meta.mode or 0)[0]!r} to a regular file")
        return
    _apply(meta, fd, path, numeric_ids, warn)


def _apply(meta: Metadata, target: Target, path: bytes, numeric_ids: bool,
           warn: Warn | None) -> None:
    mode = meta.mode or 0
    follow = _follow(target)
    is_link = stat.S_ISLNK(mode)
    _restore_owner(meta, target, path, numeric_ids, warn)
    if not is_link:
        try:
            os.chmod(target, stat.S_IMODE(mode))
        except OSError as e:
            _warn(warn, f"{os.fsdecode(path)}: chmod {stat.S_IMODE(mode):o}: {e.strerror}")
    try:
        existing = [os.fsencode(n) for n in os.listxattr(target, follow_symlinks=follow)]
    except OSError as e:
        existing = []
        if meta.linux_xattr:
            _warn(warn, f"{os.fsdecode(path)}: cannot list xattrs: {e.strerror}")
    if meta.linux_xattr or existing:
        _restore_xattrs(meta, target, path, existing, warn)
    if not is_link:
        _restore_acl(meta, target, path, numeric_ids, warn)
    try:
        os.utime(target, ns=(meta.atime, meta.mtime), follow_symlinks=follow)
    except OSError as e:
        _warn(warn, f"{os.fsdecode(path)}: cannot set times: {e.strerror}")
    except OverflowError:  # recorded, but beyond what this system's time_t holds
        _warn(warn, f"{os.fsdecode(path)}: cannot set times: out of range here")
    if meta.linux_attr and stat.S_IFMT(mode) in (stat.S_IFREG, stat.S_IFDIR):
        _set_linux_attr(path, meta.linux_attr, warn,
                        target if isinstance(target, int) else None)


# Regular, directory, symlink, char, block, fifo, socket.
_KNOWN_TYPES = frozenset((0o100000, 0o040000, 0o120000, 0o020000, 0o060000, 0o010000, 0o140000))
