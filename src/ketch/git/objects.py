"""Git object ids, loose-object headers, and tree and commit encoding."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ketch.errors import CorruptObject

# Pack type numbers double as our object-type codes.
COMMIT = 1
TREE = 2
BLOB = 3
TAG = 4

TYPE_NAMES = {COMMIT: b"commit", TREE: b"tree", BLOB: b"blob", TAG: b"tag"}
TYPE_NUMS = {v: k for k, v in TYPE_NAMES.items()}

MODE_FILE = 0o100644
MODE_EXEC = 0o100755
MODE_SYMLINK = 0o120000
MODE_TREE = 0o40000
MODE_GITLINK = 0o160000

EMPTY_BLOB_ID = bytes.fromhex("e69de29bb2d1d6434b8b29ae775ad8c2e48c5391")
EMPTY_TREE_ID = bytes.fromhex("4b825dc642cb6eb9a060e54bf8d69288fbee4904")


def header(type_num: int, size: int) -> bytes:
    return b"%s %d\0" % (TYPE_NAMES[type_num], size)


def object_id(type_num: int, data: bytes | memoryview) -> bytes:
    """The raw 20-byte git id of an object."""
    h = hashlib.sha1(header(type_num, len(data)))
    h.update(data)
    return h.digest()


class MalformedObject(CorruptObject, ValueError):
    """A tree or commit whose bytes do not parse.

    Also a ValueError, which is what callers caught before it existed."""


class TreeEntry(NamedTuple):
    mode: int
    name: bytes
    oid: bytes


def _sort_key(entry: TreeEntry) -> bytes:
    # git sorts tree entries as if directory names ended in '/'.
    return entry.name + b"/" if entry.mode == MODE_TREE else entry.name


def encode_tree(entries: Iterable[TreeEntry]) -> bytes:
    """Encode entries in git's canonical order (fsck --strict clean)."""
    return b"".join(
        b"%o %s\0%s" % (e.mode, e.name, e.oid) for e in sorted(entries, key=_sort_key)
    )


def decode_tree(data: bytes) -> Iterator[TreeEntry]:
    pos = 0
    n = len(data)
    while pos < n:
        sp = data.find(b" ", pos)
        nul = data.find(b"\0", sp + 1) if sp >= 0 else -1
        if nul < 0:
            raise MalformedObject("truncated tree entry")
        try:
            mode = int(data[pos:sp], 8)
        except ValueError:
            raise MalformedObject("tree entry with a bad mode") from None
        name = data[sp + 1 : nul]
        oid = data[nul + 1 : nul + 21]
        if len(oid) != 20:
            raise MalformedObject("truncated tree entry")
        yield TreeEntry(mode, name, oid)
        pos = nul + 21


class Commit(NamedTuple):
    tree: bytes
    parents: list[bytes]
    author: bytes
    author_time: int
    author_tz: bytes
    committer: bytes
    committer_time: int
    committer_tz: bytes
    message: bytes


def encode_commit(
    tree: bytes,
    parents: Iterable[bytes],
    author: bytes,
    when: int,
    tz: bytes,
    message: bytes,
    committer: bytes | None = None,
    commit_when: int | None = None,
    commit_tz: bytes | None = None,
) -> bytes:
    lines = [b"tree " + tree.hex().encode()]
    lines += [b"parent " + p.hex().encode() for p in parents]
    lines.append(b"author %s %d %s" % (author, when, tz))
    lines.append(
        b"committer %s %d %s"
        % (
            committer if committer is not None else author,
            commit_when if commit_when is not None else when,
            commit_tz if commit_tz is not None else tz,
        )
    )
    return b"\n".join(lines) + b"\n\n" + message


def _split_ident(value: bytes) -> tuple[bytes, int, bytes]:
    parts = value.rsplit(b" ", 2)
    if len(parts) != 3:
        raise MalformedObject("commit with a bad author or committer line")
    ident, when, tz = parts
    try:
        return ident, int(when), tz
    except ValueError:
        raise MalformedObject("commit with a bad timestamp") from None


def _hex_id(value: bytes) -> bytes:
    try:
        oid = bytes.fromhex(value.decode("ascii"))
    except ValueError:  # UnicodeDecodeError included
        raise MalformedObject("commit with a bad object id") from None
    if len(oid) != 20:
        raise MalformedObject("commit with a bad object id")
    return oid


def decode_commit(data: bytes) -> Commit:
    head, _, message = data.partition(b"\n\n")
    tree = b""
    parents: list[bytes] = []
    author = committer = (b"", 0, b"+0000")
    for line in head.split(b"\n"):
        key, _, value = line.partition(b" ")
        if key == b"tree":
            tree = _hex_id(value)
        elif key == b"parent":
            parents.append(_hex_id(value))
        elif key == b"author":
            author = _split_ident(value)
        elif key == b"committer":
            committer = _split_ident(value)
    if len(tree) != 20:
        raise MalformedObject("commit has no tree")
    return Commit(tree, parents, *author, *committer, message)


def tz_offset(seconds_east: int) -> bytes:
    """Format a UTC offset as git's +hhmm/-hhmm."""
    sign = b"-" if seconds_east < 0 else b"+"
    m = abs(seconds_east) // 60
    return b"%s%02d%02d" % (sign, m // 60, m % 60)
