"""A repository's locator: which pack holds an object, where, and how long its
entry is, for every pack it covers, in one file of the store.

Each pack's idx answers for its own pack only, so finding an object in a
repository of P packs costs up to P lookups, each a GET while that idx is not
held: one 1 MB file out of the benchmark's 22-pack repository cost 240 GETs of
idx pieces. The locator merges the idx files::

    "KLOC", u32 version (1), u32 P packs, u32 N objects          16 bytes
    fan-out: 256 u32, cumulative counts by first id byte          1024 bytes
    P pack ids (the 20 bytes of pack-<sha1>.pack's name)
    N records sorted by id: id (20), pack number (u32), offset (u64),
        length of the entry (u32; 0 when unknown), and how far back the first
        entry within BEHIND bytes before it starts (u32; 0: none)

all big-endian. A lookup interpolates, as RemoteIdx does, a window of ~3 KB
where the id must lie: one GET; its record gives the pack, the offset and the
length, so the read that follows is one GET of exactly the entry's bytes. A
restore that looks up many ids fetches it whole (SparseFile's rule), once.

The manifest names it (`locator`: name, size, sha256 and its object count).
Packs the manifest lists and the locator does not (newer, or retired by gc)
are searched by their own idx; a record naming a pack the manifest no longer
lists (gc deleted it) counts as not found. Nothing in it is trusted beyond
one lookup: every object read is checked against its id, offsets and lengths
are bounded by the pack's size, and a locator that cannot be read or parsed
is set aside for the per-pack search.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ketch.errors import CorruptObject
from ketch.git.idx import PackIndex
from ketch.offsite.manifest import FileEntry, Manifest, pack_key
from ketch.offsite.s3index import GetMany, SparseFile, window

if TYPE_CHECKING:
    from ketch.offsite.bucket import BucketRepository

MAGIC = b"KLOC"
VERSION = 1
_HEAD = 16 + 1024
RECORD = np.dtype([("id", "S20"), ("pack", ">u4"), ("off", ">u8"), ("len", ">u4"),
                   ("back", ">u4")])
_REC = RECORD.itemsize  # 40
BEHIND = 64 << 10
# A lookup of more ids than this, or the _ROUNDS-th, fetches it whole (up to
# _WHOLE_MAX): a restore of a tree looks up thousands.
_MANY_WINDOWS = 16
_ROUNDS = 24
_WHOLE_MAX = 256 << 20
# Rewrite the locator when the packs it does not cover hold more than this
# share of the objects it does: rarely, so its upload stays a few percent of
# what the saves since added.
STALE_SHARE = 0.25


def objects_in(idx_size: int) -> int:
    """About how many objects an idx of this size indexes (28 bytes each, plus
    its fixed 1,072): the manifest knows sizes, not counts."""
    return max(0, (idx_size - 1072) // 28)


def _pack_records(idx_path: str, pack_size: int, num: int) -> np.ndarray:
    """The records of one pack (number `num`), in its idx's order."""
    ix = PackIndex(idx_path)
    try:
        rec = np.zeros(ix.count, dtype=RECORD)
        rec["id"] = ix.ids
        offs = ix.offsets().astype(np.uint64)
    finally:
        ix.close()
    rec["pack"] = num
    rec["off"] = offs
    # An entry ends where the next one in the pack starts; the last at the trailer.
    order = np.argsort(offs, kind="stable")
    starts = offs[order]
    ends = np.append(starts[1:], np.uint64(max(pack_size - 20, 0)))
    size = np.where(ends > starts, ends - starts, np.uint64(0))
    size[size >= 1 << 32] = 0  # unknown: read as RemoteIdx would
    first = np.searchsorted(starts, starts - np.minimum(starts, np.uint64(BEHIND)))
    rec["len"][order] = size
    rec["back"][order] = starts - starts[first]
    return rec


def build(packs: Sequence[tuple[str, str, int]], out_path: str) -> int:
    """Write the locator of `packs` ((pack file name, local idx path, pack size))
    to `out_path`; its number of objects."""
    parts = [_pack_records(idx, size, k) for k, (_, idx, size) in enumerate(packs)]
    rec = np.concatenate(parts) if parts else np.zeros(0, dtype=RECORD)
    rec = rec[np.argsort(rec["id"], kind="stable")]
    first = np.frombuffer(rec["id"].tobytes(), dtype=np.uint8)[::20]
    fan = np.cumsum(np.bincount(first, minlength=256)).astype(">u4")
    names = b"".join(bytes.fromhex(name[len("pack-"): -len(".pack")]) for name, _, _ in packs)
    tmp = f"{out_path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack(">III", VERSION, len(packs), len(rec)))
        f.write(fan.tobytes())
        f.write(names)
        # astype: concatenate may have made the fields native-endian.
        f.write(rec.astype(RECORD).tobytes())
    os.replace(tmp, out_path)
    return len(rec)


def locator_name(path: str) -> tuple[str, str]:
    """(its name in the store, its sha256) for a locator file just built."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return f"locator-{digest[:40]}.kloc", digest


def refresh(repo: BucketRepository, *, force: bool = False) -> FileEntry | None:
    """Write a locator of the repository's packs in use and name it in the
    manifest, when the one named covers too little of them (STALE_SHARE) or,
    with `force` (gc deleted packs), always; then delete the one it replaced
    (where the key may delete) and return it."""
    m = repo.manifest
    live = [p for p in m.packs if not p.retired]
    total = sum(objects_in(p.idx.size) for p in live)
    covered = m.locator_objects if m.locator else 0
    if len(live) < 2 or not force and total - covered <= STALE_SHARE * covered:
        return None
    with tempfile.TemporaryDirectory(prefix="locator-", dir=repo.cache_dir) as tmp:
        # Links to the dedup cache's idx files, the others fetched: another
        # process's save may delete from that cache what it thinks stale.
        dedup = os.path.join(repo.cache_dir, "dedup")
        for p in live:
            with contextlib.suppress(OSError):
                os.link(os.path.join(dedup, p.idx.name), os.path.join(tmp, p.idx.name))
        idx = repo.fetch_idx_files(live, tmp)
        path = os.path.join(tmp, "locator")
        n = build([(p.pack.name, i, p.pack.size) for p, i in zip(live, idx, strict=True)], path)
        name, digest = locator_name(path)
        entry = FileEntry(name, os.path.getsize(path), digest)
        key = pack_key(repo.name, name)
        repo.store.put_file_once(key, path, sha256=digest)
        old = m.locator

        def edit(m: Manifest) -> bool:
            nonlocal old
            if m.locator == entry or not force and m.locator and m.locator_objects >= n:
                return False  # another writer's is as good
            old, m.locator, m.locator_objects = m.locator, entry, n
            return True

        repo.change_manifest(edit)
        if repo.manifest.locator != entry:
            return None
        if repo.store.stat(key) is None:
            # A gc swept it as unnamed between its upload and the manifest
            # naming it (gc lists, then reads the manifest): once more.
            repo.store.put_file_once(key, path, sha256=digest)
    if old is not None and old != entry:
        with contextlib.suppress(Exception):
            repo.delete_file(old)  # a machine's key may not delete: gc will
    return old


def is_locator(filename: str) -> bool:
    return filename.startswith("locator-") and filename.endswith(".kloc")


class RemoteLocator(SparseFile):
    """The locator in the store, read in pieces (see the module doc)."""

    def __init__(self, file: FileEntry, key: str, *, get_many: GetMany, cache_dir: str,
                 where: str, packs_hint: int) -> None:
        super().__init__(file, key, get_many=get_many, cache_dir=cache_dir, where=where)
        self.packs_hint = packs_hint
        self._fan: list[int] = []
        self.pack_names: list[str] = []
        self.count = 0
        self._rec_at = 0

    def _load(self) -> None:
        if self._fan:
            return
        self._load_known()
        size = self.file.size
        self._fetch_head(min(size, _HEAD + 20 * (self.packs_hint + 16)))
        if size < _HEAD:
            raise CorruptObject(f"{self.where}: {self.file.name} is too short")
        magic, version, npacks, n = struct.unpack(">4sIII", self._read(0, 16))
        if magic != MAGIC or version != VERSION:
            raise CorruptObject(f"{self.where}: {self.file.name} is not a version "
                                f"{VERSION} locator")
        rec_at = _HEAD + 20 * npacks
        if rec_at + _REC * n != size:
            raise CorruptObject(f"{self.where}: {self.file.name}: its size does not fit "
                                f"{npacks} packs and {n} objects")
        self._fetch([(_HEAD, rec_at)])
        fan = list(struct.unpack(">256I", self._read(16, _HEAD)))
        if fan[255] != n or any(b < a for a, b in zip(fan, fan[1:], strict=False)):
            raise CorruptObject(f"{self.where}: {self.file.name}: bad fan-out")
        raw = self._read(_HEAD, rec_at)
        self.pack_names = [f"pack-{raw[i:i + 20].hex()}.pack" for i in range(0, len(raw), 20)]
        self.count, self._rec_at, self._fan = n, rec_at, fan

    def _window(self, oid: bytes) -> tuple[int, int, int, int] | None:
        return window(self._fan, oid)

    def locate(self, oids: Iterable[bytes]) -> dict[bytes, tuple[str, int, int, int]]:
        """(pack name, offset, entry length or 0, where the entries within BEHIND
        before it start) of those of `oids` it covers."""
        self._load()
        at = self._rec_at
        pending = {o: w for o in oids if (w := self._window(o)) is not None}
        out: dict[bytes, tuple[str, int, int, int]] = {}
        if (len(pending) > _MANY_WINDOWS or self.rounds >= _ROUNDS) and \
                self.file.size <= _WHOLE_MAX:
            self.fetch_whole()  # a walk of many paths: all of it, once
        while pending:
            self._fetch([(at + _REC * a, at + _REC * z) for _, _, a, z in pending.values()])
            wider = {}
            for o, (lo, hi, a, z) in pending.items():
                raw = self._read(at + _REC * a, at + _REC * z)
                if o < raw[:20] and a > lo:
                    wider[o] = (lo, hi, max(lo, a - 2 * (z - a)), z)
                elif o > raw[-_REC : -_REC + 20] and z < hi:
                    wider[o] = (lo, hi, a, min(hi, z + 2 * (z - a)))
                else:
                    i = _search(raw, o)
                    if i >= 0:
                        num, off, length, back = struct.unpack_from(">IQII", raw, _REC * i + 20)
                        if num < len(self.pack_names) and back <= min(off, BEHIND):
                            out[o] = (self.pack_names[num], off, length, off - back)
            pending = wider
        return out


def _search(raw: bytes, oid: bytes) -> int:
    """Index of the record of `oid` among the sorted records in `raw`, or -1."""
    lo, hi = 0, len(raw) // _REC
    while lo < hi:
        mid = (lo + hi) // 2
        if raw[_REC * mid : _REC * mid + 20] < oid:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < len(raw) // _REC and raw[_REC * lo : _REC * lo + 20] == oid else -1
