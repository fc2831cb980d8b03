"""Loose objects: ``objects/xx/<38 hex>``, each a zlib stream of ``type size\\0data``.

ketch never writes these, but a repository may have them when git commands
have been run in it, so they must read like any other object.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from ketch.errors import CorruptObject
from ketch.git.deflate import InflateError, Inflater
from ketch.git.objects import TYPE_NUMS, object_id

_HEX = frozenset(b"0123456789abcdef")
# "commit 18446744073709551615\0" is the longest header git could write.
_MAX_HEADER = 32


class CorruptLooseObject(CorruptObject):
    """A loose object file could not be decoded."""


def loose_path(objects_dir: str | os.PathLike[str], oid: bytes) -> str:
    h = oid.hex()
    return os.path.join(os.fspath(objects_dir), h[:2], h[2:])


def _parse_header(path: str, head: bytes) -> tuple[int, int, int]:
    """(type, size, offset of the data) from the inflated start of an object."""
    nul = head.find(b"\0", 0, _MAX_HEADER)
    if nul < 0:
        raise CorruptLooseObject(f"{path}: no object header")
    kind, sp, size_text = head[:nul].partition(b" ")
    type_num = TYPE_NUMS.get(kind)
    if not sp or type_num is None:
        shown = kind[:16].decode("ascii", "backslashreplace")
        raise CorruptLooseObject(f"{path}: unknown object type {shown}")
    if not size_text.isdigit() or (size_text[:1] == b"0" and len(size_text) > 1):
        shown = size_text[:24].decode("ascii", "backslashreplace")
        raise CorruptLooseObject(f"{path}: bad object size {shown}")
    return type_num, int(size_text), nul + 1


def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def read_loose(
    objects_dir: str | os.PathLike[str], oid: bytes, verify: bool = False
) -> tuple[int, bytes] | None:
    """(type, data) of a loose object, or None if there is no such file."""
    path = loose_path(objects_dir, oid)
    raw = _read_file(path)
    if raw is None:
        return None
    d = Inflater()
    try:
        full = d.decompress(raw)
    except InflateError as e:
        raise CorruptLooseObject(f"{path}: zlib error: {e}") from e
    if not d.eof:
        raise CorruptLooseObject(f"{path}: truncated zlib stream")
    type_num, size, start = _parse_header(path, full)
    if len(full) - start != size:
        raise CorruptLooseObject(
            f"{path}: header says {size} bytes, object has {len(full) - start}"
        )
    data = full[start:]
    if verify and object_id(type_num, data) != oid:
        raise CorruptLooseObject(f"{path}: contents hash to {object_id(type_num, data).hex()}")
    return type_num, data


def loose_header(objects_dir: str | os.PathLike[str], oid: bytes) -> tuple[int, int] | None:
    """(type, size) of a loose object, inflating only its header."""
    path = loose_path(objects_dir, oid)
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        head = Inflater().decompress(raw, _MAX_HEADER)
    except InflateError as e:
        raise CorruptLooseObject(f"{path}: zlib error: {e}") from e
    type_num, size, _ = _parse_header(path, head)
    return type_num, size


def loose_exists(objects_dir: str | os.PathLike[str], oid: bytes) -> bool:
    return os.path.isfile(loose_path(objects_dir, oid))


def iter_loose_ids(objects_dir: str | os.PathLike[str]) -> Iterator[bytes]:
    """The raw ids of all loose objects, fan-out directory by directory."""
    base = os.fsencode(objects_dir)
    for i in range(256):
        prefix = b"%02x" % i
        try:
            names = os.listdir(os.path.join(base, prefix))
        except (FileNotFoundError, NotADirectoryError):
            continue
        # git leaves temporary files (tmp_obj_*) here while writing; skip them.
        for name in sorted(names):
            if len(name) == 38 and _HEX.issuperset(name):
                yield bytes.fromhex((prefix + name).decode())
