"""Checking one pack and its idx, end to end, collecting every problem.

Cheap checks (`quick`): the idx's own trailing SHA-1, the pack's header and
size against the idx, and the pack checksum the idx records against the
pack's trailer and name. Then, unless `quick`, one sequential read of the pack
in windows: the pack's trailing SHA-1 over all of it and each entry's CRC32
against the idx, which is what says where damage is ("at offset N"). With
`read_data` every entry is also inflated (deltas resolved) and hashed against
its id: that finds what a CRC cannot (an entry rewritten with a matching CRC).

The pack is read with pread into one window at a time rather than mmap'd:
touched pages of a map count towards the process's memory, and a 1 GB pack
would cost 1 GB of RSS.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from isal import isal_zlib

from ketch.errors import CorruptObject
from ketch.git import entry as codec
from ketch.git.deflate import InflateError, crc32
from ketch.git.idx import PackIndex
from ketch.git.objects import TYPE_NAMES, header
from ketch.git.packread import PackFile

_WINDOW = 4 << 20
_THREADS = 2
_IN_FLIGHT = 3  # windows read ahead of the checking threads (bounds memory)
_HASH_BLOCK = 1 << 20

ResolveBase = Callable[[bytes], tuple[int, bytes]]


@dataclass
class Damage:
    """One damaged entry: where it is, what object it holds, what is wrong."""

    offset: int
    oid: bytes
    what: str


@dataclass
class PackCheck:
    """What was found in one pack; `problems` are about the pack as a whole."""

    name: str  # pack-<sha>.pack
    objects: int = 0
    size: int = 0
    bytes_read: int = 0
    objects_read: int = 0  # inflated and hashed
    problems: list[str] = field(default_factory=list)
    damaged: list[Damage] = field(default_factory=list)
    lost: bool = False  # no object of it can be read (the pack or its idx is gone)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.damaged

    def summary(self) -> str:
        """The problems in one line (mirror verify's report)."""
        parts = list(self.problems)
        if self.damaged:
            first = self.damaged[0]
            more = f" (and {len(self.damaged) - 1} more)" if len(self.damaged) > 1 else ""
            parts.append(f"entry {first.oid.hex()} at offset {first.offset} {first.what}{more}")
        return "; ".join(parts)


def sha1_of(path: str, end: int) -> bytes:
    """SHA-1 of the first `end` bytes of a file."""
    h = hashlib.sha1()
    with open(path, "rb", buffering=0) as f:
        left = end
        while left > 0:
            block = f.read(min(left, _HASH_BLOCK))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.digest()


def check_idx(idx_path: str) -> str | None:
    """A problem with the idx file's own trailing SHA-1, or None."""
    size = os.path.getsize(idx_path)
    with open(idx_path, "rb") as f:
        f.seek(max(0, size - 20))
        trailer = f.read(20)
    if size < 20 or trailer != sha1_of(idx_path, size - 20):
        return f"{os.path.basename(idx_path)} does not match its own SHA-1"
    return None


def check_pack(pack_path: str, idx_path: str, name_hex: str | None = None, *,
               quick: bool = False, read_data: bool = True,
               resolve_base: ResolveBase | None = None,
               on_bytes: Callable[[int], None] | None = None) -> PackCheck:
    """Check `pack_path` against `idx_path`; every problem found, with offsets.

    `name_hex`: the SHA-1 the pack's name carries (None: taken from the file
    name when it has the form pack-<sha>.pack)."""
    name = os.path.basename(pack_path)
    rep = PackCheck(name)
    if name_hex is None and name.startswith("pack-") and name.endswith(".pack"):
        name_hex = name[len("pack-"):-len(".pack")]
    idx_name = os.path.basename(idx_path)
    if not os.path.exists(idx_path):
        rep.problems.append(f"{idx_name} is missing: the objects of {name} cannot be found "
                            "(git index-pack can rebuild it)")
        rep.lost = True
        return rep
    try:
        ix = PackIndex(idx_path)
    except CorruptObject as e:
        rep.problems.append(f"{idx_name} is unreadable ({_why(e, idx_path)}): the objects of "
                            f"{name} cannot be found")
        rep.lost = True
        return rep
    try:
        rep.objects = ix.count
        bad_idx = check_idx(idx_path)
        if bad_idx is not None:
            rep.problems.append(bad_idx)
        if not os.path.exists(pack_path):
            rep.problems.append(f"{name} is missing (its idx lists "
                                f"{ix.count} object{'s' if ix.count != 1 else ''})")
            rep.lost = True
            return rep
        _check_pack(rep, pack_path, ix, name_hex, quick=quick, read_data=read_data,
                    resolve_base=resolve_base, on_bytes=on_bytes)
    finally:
        ix.close()
    return rep


def _why(e: Exception, path: str) -> str:
    return str(e).removeprefix(f"{path}: ")


def _check_pack(rep: PackCheck, pack_path: str, ix: PackIndex, name_hex: str | None, *,
                quick: bool, read_data: bool, resolve_base: ResolveBase | None,
                on_bytes: Callable[[int], None] | None) -> None:
    name = rep.name
    size = rep.size = os.path.getsize(pack_path)
    offs = ix.offsets().astype(np.int64)
    order = np.argsort(offs, kind="stable")
    offs = offs[order]
    last = int(offs[-1]) if len(offs) else 11
    with open(pack_path, "rb", buffering=0) as f:
        head = f.read(12)
        f.seek(max(0, size - 20))
        trailer = f.read(20)
    if len(head) < 12 or head[:4] != b"PACK" or struct.unpack(">I", head[4:8])[0] not in (2, 3):
        rep.problems.append(f"{name}: not a pack file (bad header)")
    elif struct.unpack(">I", head[8:12])[0] != ix.count:
        rep.problems.append(f"{name}: its header says {struct.unpack('>I', head[8:12])[0]} "
                            f"objects, its idx lists {ix.count}")
    truncated = size < last + 1 + 20 or size < 32
    if truncated:
        rep.problems.append(f"{name} is truncated: {size:,} bytes, its idx has an entry "
                            f"at offset {last:,}")
    elif trailer != ix.pack_sha:
        rep.problems.append(f"{name}: its trailer is not the pack checksum its idx records")
    if name_hex is not None and ix.pack_sha.hex() != name_hex:
        rep.problems.append(f"{name}: its idx records checksum {ix.pack_sha.hex()}, "
                            "not the one in its name")
    if len(offs) and (int(offs[0]) != 12 or bool((np.diff(offs) <= 0).any())):
        rep.problems.append(f"{name}: its idx has overlapping or misplaced offsets")
        return
    if quick:
        return
    ids = ix.ids[order]
    crcs = ix.crcs()[order]
    _read_through(rep, pack_path, size, offs, ids, crcs, read_data, resolve_base, on_bytes,
                  ix)


def _read_through(rep: PackCheck, pack_path: str, size: int, offs: np.ndarray,
                  ids: np.ndarray, crcs: np.ndarray, read_data: bool,
                  resolve_base: ResolveBase | None, on_bytes: Callable[[int], None] | None,
                  ix: PackIndex) -> None:
    """One pass over the pack: its SHA-1, each entry's CRC32, and with
    `read_data` each object's id."""
    n = len(offs)
    data_end = max(size - 20, 12)
    off_list: list[int] = offs.tolist()
    end_list: list[int] = [*off_list[1:], data_end]
    # Entries that end past the data (a truncated pack) are cut off.
    whole = bisect.bisect_right(end_list, data_end)
    while whole and end_list[whole - 1] < off_list[whole - 1]:
        whole -= 1
    crc_list: list[int] = crcs.tolist()
    raw_ids = np.ascontiguousarray(ids, dtype="S20").tobytes()
    h = hashlib.sha1()
    deltas: list[tuple[int, bytes]] = []
    fd = os.open(pack_path, os.O_RDONLY)
    pending: list[Future[_Found]] = []
    pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="ketch-packcheck")
    try:
        pos = 0
        i = 0
        while i < whole:
            # A window of whole entries (or one entry bigger than a window).
            j = max(i + 1, bisect.bisect_right(end_list, off_list[i] + _WINDOW, i, whole))
            stop = end_list[j - 1]
            buf = os.pread(fd, stop - pos, pos)
            h.update(buf)
            rep.bytes_read += len(buf)
            if on_bytes is not None:
                on_bytes(len(buf))
            if len(buf) < stop - pos:
                break  # shrank while we read: the rest is cut off below
            # Inflating and hashing release the GIL: windows are checked in
            # worker threads while this one reads and hashes the next.
            while len(pending) >= _IN_FLIGHT:
                _merge(rep, pending.pop(0).result(), deltas)
            pending.append(pool.submit(_window, buf, pos, off_list[i:j], end_list[i:j],
                                       raw_ids[20 * i : 20 * j], crc_list[i:j], read_data))
            pos = stop
            i = j
        for f in pending:
            _merge(rep, f.result(), deltas)
        pending.clear()
        for k in range(i, n):
            rep.damaged.append(Damage(off_list[k], raw_ids[20 * k : 20 * k + 20],
                                      "is cut off by the end of the pack"))
        if pos < data_end:
            tail = os.pread(fd, data_end - pos, pos)
            h.update(tail)
            rep.bytes_read += len(tail)
        trailer = os.pread(fd, 20, data_end) if size >= 32 else b""
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown()
        os.close(fd)
    # Damaged entries already say where; the trailer alone is worth a line
    # only when the damage is outside every entry (header, trailer).
    if size >= 32 and h.digest() != trailer and not rep.damaged:
        rep.problems.append(f"{rep.name}: its content does not match its trailing SHA-1")
    if deltas:
        _check_deltas(rep, pack_path, ix, deltas, resolve_base)


_Found = tuple[list[Damage], list[tuple[int, bytes]], int]


_HEADS = {t: b"%s %%d\0" % name for t, name in TYPE_NAMES.items()}


def _window(buf: bytes, pos: int, offs: list[int], ends: list[int], ids: bytes,
            crcs: list[int], read_data: bool) -> _Found:
    """Check the entries of one window: (damaged, deltas, objects read).

    The loop is the hot path of --read-data (a call per object): an entry is
    decoded inline, and only one that is not a plain whole object goes through
    `_entry` for the full diagnosis."""
    acc = PackCheck("")
    deltas: list[tuple[int, bytes]] = []
    view = memoryview(buf)
    sha1, inflate, heads = hashlib.sha1, isal_zlib.decompress, _HEADS
    for k, off in enumerate(offs):
        raw = view[off - pos : ends[k] - pos]
        oid = ids[20 * k : 20 * k + 20]
        crc_ok = crc32(raw) == crcs[k]
        if not crc_ok or not read_data or len(raw) < 2:
            if not crc_ok or read_data:
                _entry(acc, raw, off, oid, crcs[k], read_data, deltas)
            continue
        c = raw[0]
        t = (c >> 4) & 7
        size = c & 15
        shift, p = 4, 1
        while c & 0x80 and p < 10 and p < len(raw):
            c = raw[p]
            size |= (c & 0x7F) << shift
            shift += 7
            p += 1
        head = heads.get(t)
        data: bytes | None = None
        if head is not None:
            try:
                data = inflate(raw[p:], bufsize=size or 1)
            except InflateError:
                pass
        if head is None or data is None or len(data) != size:
            _entry(acc, raw, off, oid, crcs[k], read_data, deltas)
            continue
        h = sha1(head % size)
        h.update(data)
        if h.digest() == oid:
            acc.objects_read += 1
        else:
            _entry(acc, raw, off, oid, crcs[k], read_data, deltas)
    view.release()
    return acc.damaged, deltas, acc.objects_read


def _merge(rep: PackCheck, found: _Found, deltas: list[tuple[int, bytes]]) -> None:
    rep.damaged += found[0]
    deltas += found[1]
    rep.objects_read += found[2]


def _entry(rep: PackCheck, raw: memoryview, off: int, oid: bytes, crc: int, read_data: bool,
           deltas: list[tuple[int, bytes]]) -> None:
    if crc32(raw) != crc:
        rep.damaged.append(Damage(off, oid, "fails its CRC32"))
        return
    if read_data:
        what = _object_problem(raw, oid)
        if what == "delta":
            deltas.append((off, oid))
        elif what:
            rep.damaged.append(Damage(off, oid, what))
        else:
            rep.objects_read += 1


def _object_problem(raw: memoryview, oid: bytes) -> str | None:
    """What is wrong with one entry's object (None: nothing; "delta": later)."""
    try:
        type_num, size, p = codec.read_header(raw, 0, len(raw))
    except CorruptObject as e:
        return f"has a bad header ({e})"
    if type_num not in codec.FULL_TYPES:
        return "delta" if type_num in (codec.OFS_DELTA, codec.REF_DELTA) else (
            f"has invalid type {type_num}")
    try:
        data = isal_zlib.decompress(raw[p:], bufsize=max(size, 1))
    except InflateError as e:
        return f"does not inflate ({e})"
    if len(data) != size:
        return f"inflates to {len(data)} bytes, its header says {size}"
    h = hashlib.sha1(header(type_num, size))
    h.update(data)
    if h.digest() != oid:
        return f"does not hash to its id (it hashes to {h.hexdigest()})"
    return None


def _check_deltas(rep: PackCheck, pack_path: str, ix: PackIndex,
                  deltas: list[tuple[int, bytes]], resolve_base: ResolveBase | None) -> None:
    """Deltas (git's packs; ketch and bup write none) are resolved through the
    pack reader and its base cache."""
    bad = {d.offset for d in rep.damaged}
    try:
        pack = PackFile(pack_path, ix, resolve_base=resolve_base, cache_bytes=16 << 20)
    except CorruptObject as e:
        rep.problems.append(f"{rep.name}: its deltas cannot be read ({e})")
        return
    with pack:
        for off, oid in deltas:
            if off in bad:
                continue
            try:
                t, data = pack.read_at(off)
            except (CorruptObject, KeyError) as e:
                rep.damaged.append(Damage(off, oid, f"is a delta that cannot be applied "
                                                    f"({_why(e, pack_path)})"))
                continue
            h = hashlib.sha1(header(t, len(data)))
            h.update(data)
            if h.digest() != oid:
                rep.damaged.append(Damage(off, oid, "does not hash to its id"))
            else:
                rep.objects_read += 1
