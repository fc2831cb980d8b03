"""POSIX ACLs, converted between the kernel's xattr form and libacl's short
text form ("u::rw-,u:alice:r--,g::r--,m::r--,o::r--") without libacl.

`acl_record` gives bup's ACL record (tag 11) for a path's xattrs; `acl_blob`
turns its text back into the xattr a restore sets.
"""

from __future__ import annotations

import stat
import struct

from ketch.idmap import gid_of, group_name, uid_of, user_name

XATTR_ACL_ACCESS = b"system.posix_acl_access"
XATTR_ACL_DEFAULT = b"system.posix_acl_default"

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
                name = user_name(qid) if tag == _ACL_USER else group_name(qid)
            qual = _acl_quote(name) if name is not None else b"%d" % qid
        rwx = (
            (b"r" if perm & 4 else b"-")
            + (b"w" if perm & 2 else b"-")
            + (b"x" if perm & 1 else b"-")
        )
        parts.append(b"%s:%s:%s" % (_ACL_TAG_LETTER.get(tag, b"?"), qual, rwx))
    return b",".join(parts)


def acl_record(mode: int, xattrs: dict[bytes, bytes]) -> tuple[bytes, bytes, bytes, bytes] | None:
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


def acl_blob(named: bytes, numeric: bytes, use_names: bool) -> bytes:
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
                qid = uid_of(qual) if kind == b"u" else gid_of(qual)
            entries.append((_ACL_NAMED[kind], perm, int(num_qual) if qid is None else qid))
        else:
            entries.append((_ACL_UNNAMED[kind], perm, _ACL_UNDEFINED_ID))
    entries.sort(key=lambda e: (e[0], e[2]))
    return struct.pack("<I", _ACL_XATTR_VERSION) + b"".join(_ACL_ENTRY.pack(*e) for e in entries)
