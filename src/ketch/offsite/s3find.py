"""Finding objects in a repository in an object store: which pack holds each,
and at what offset (for ketch.offsite.s3repo).

The locator (ketch.offsite.locator) answers first, for the packs it covers;
the others (newer than it, or retired) are searched by their own idx, read in
pieces (ketch.offsite.s3index), most recently hit first (newest first to
begin with), since a file's chunks and trees were mostly written together. A
locator that cannot be read, or whose answers turn out wrong, is set aside
(`drop_locator`) and every pack's idx answers instead.
"""

from __future__ import annotations

from collections.abc import Iterable

from ketch.errors import CorruptObject, KetchError
from ketch.offsite.locator import RemoteLocator
from ketch.offsite.manifest import Manifest, PackEntry, pack_key
from ketch.offsite.s3index import WHOLE_IDX, GetMany, RemoteIdx
from ketch.offsite.s3read import SPAN, Range

# A lookup of more ids than this asks the locator for the first _PROBE and the
# last only; when they are in one pack (a file's chunks lie together), that
# pack's idx for the rest: one GET of it, not one locator window per chunk.
_MANY = 8
_PROBE = 2
_REMEMBER = 256
# A batch's objects from the first's entry to the last's, read as one range
# when they lie in one pack no further apart than this each (a file's chunks,
# written one after the other): no lookup for those between.
_RUN_PER_OBJECT = 64 << 10

Found = dict[bytes, tuple[str, int]]  # id -> (idx name, offset)


class PackGone(KetchError):
    """A pack or idx the manifest named is no longer in the store."""


class Finder:
    """Where the objects of one repository are; see the module doc."""

    def __init__(self, name: str, *, get_many: GetMany, cache_dir: str, where: str,
                 whole_idx_bytes: int = WHOLE_IDX) -> None:
        self.name = name
        self.get_many = get_many
        self.cache_dir = cache_dir
        self.where = where
        self.whole_idx_bytes = whole_idx_bytes
        self.packs: dict[str, PackEntry] = {}
        self.locator: RemoteLocator | None = None
        self._idx: dict[str, RemoteIdx] = {}
        self._by_time: list[str] = []
        self.order: list[str] = []  # search order; see _hit
        # What the locator said of objects looked up a few at a time: where their
        # entries end, and where the entries locator.BEHIND before them start.
        self.ends: dict[tuple[str, int], int] = {}
        self.firsts: dict[tuple[str, int], int] = {}

    def take(self, manifest: Manifest) -> None:
        """The manifest's packs and locator, from now on."""
        self.packs = manifest.pack_by_idx()
        self._idx = {n: ix for n, ix in self._idx.items() if n in self.packs}
        # A pack gc retired (ketch.offsite.bucketgc) holds copies found elsewhere first.
        self._by_time = [p.idx.name for p in sorted(manifest.packs,
                                                    key=lambda p: (p.retired != 0, -p.mtime,
                                                                   p.pack.name))]
        self.order = self._by_time[:]
        loc = manifest.locator
        if loc is None:
            self.locator = None
        elif self.locator is None or self.locator.file != loc:
            self.locator = RemoteLocator(
                loc, pack_key(self.name, loc.name), get_many=self.get_many,
                cache_dir=self.cache_dir, where=self.where, packs_hint=len(manifest.packs))

    def drop_locator(self) -> None:
        self.locator = None
        self.ends.clear()
        self.firsts.clear()

    def index(self, idx_name: str) -> RemoteIdx:
        ix = self._idx.get(idx_name)
        if ix is None:
            entry = self.packs[idx_name]
            ix = self._idx[idx_name] = RemoteIdx(
                entry, pack_key(self.name, entry.idx.name), get_many=self.get_many,
                cache_dir=self.cache_dir, where=self.where, whole_idx_bytes=self.whole_idx_bytes)
        return ix

    def locate(self, oids: Iterable[bytes], *, use_locator: bool = True) -> Found:
        """(idx name, offset) of each of `oids` the repository holds."""
        found: Found = {}
        todo = list(dict.fromkeys(oids))
        order = self.order
        if use_locator and self.locator is not None and todo:
            covered = self._by_locator(self.locator, todo, found)
            if covered is not None:
                todo = [o for o in todo if o not in found]
                order = [n for n in order if n not in covered]
        for name in list(order):
            if not todo:
                break
            self._search_pack(name, todo, found)
            todo = [o for o in todo if o not in found]
        return found

    def _search_pack(self, name: str, todo: list[bytes], found: Found) -> None:
        hits = self.index(name).locate(todo)
        for o, off in hits.items():
            found[o] = (name, off)
        if hits:
            self._hit(name)

    def _by_locator(self, loc: RemoteLocator, todo: list[bytes], found: Found) -> set[str] | None:
        """Look `todo` up in the locator (see _MANY); the idx names of the packs
        it covers, or None when it cannot be read (then every pack is searched)."""
        try:
            if len(todo) > _MANY and not loc.held_whole:
                probe = [*todo[:_PROBE], todo[-1]]
                packs = self._take_located(loc.locate(probe), found)
                if len(packs) == 1 and all(o in found for o in probe):
                    name = packs.pop()
                    ix = self.index(name)
                    if ix.file.size <= 2 * WHOLE_IDX:
                        ix.fetch_whole()  # one GET, then every lookup in it is free
                        self._search_pack(name, [o for o in todo if o not in found], found)
            self._take_located(loc.locate([o for o in todo if o not in found]), found)
        except (PackGone, CorruptObject):
            # Gone (a gc replaced it: the manifest is read again when a pack is
            # missing too) or damaged: the packs' own idx files.
            self.drop_locator()
            return None
        return {n[: -len(".pack")] + ".idx" for n in loc.pack_names}

    def _take_located(self, hits: dict[bytes, tuple[str, int, int, int]],
                      found: Found) -> set[str]:
        """Record the locator's answers that fit a pack the manifest lists; the
        idx names of those packs."""
        names = set()
        # What a few lookups learn is kept for their reads; a restore's thousands
        # would cost memory, and its reads plan from the idx files' offsets.
        small = len(hits) <= _REMEMBER
        for o, (pack_name, off, length, first) in hits.items():
            name = pack_name[: -len(".pack")] + ".idx"
            entry = self.packs.get(name)
            if entry is None or off + length > entry.pack.size - 20:
                continue  # gc deleted that pack, or a bogus record
            found[o] = (name, off)
            if length and small:
                self.ends[(name, off)] = off + length
                self.firsts[(name, off)] = first
            names.add(name)
        return names

    def _hit(self, name: str) -> None:
        """Search `name` first from now on, then the packs written just before it,
        then those after: a save writes a file's chunks, then its trees, then the
        commit, and splits them over packs in that order."""
        i = self._by_time.index(name)  # newest first
        self.order = [name, *self._by_time[i + 1 :], *reversed(self._by_time[:i])]

    def with_prefix(self, hexprefix: str) -> set[bytes]:
        return {o for name in self.order for o in self.index(name).with_prefix(hexprefix)}

    def known_ends(self, name: str, items: list[tuple[int, bytes]]) -> dict[int, int]:
        return {off: end for off, _ in items if (end := self.ends.get((name, off)))}

    def run_of(self, rest: list[bytes]) -> Range | None:
        """One range from the first of `rest` to the last, decoded whole, when
        the locator puts them in one pack close enough (_RUN_PER_OBJECT): a
        file's chunks without a lookup each."""
        loc = self.locator
        if loc is None or len(rest) <= _MANY or loc.held_whole:
            return None
        found: Found = {}
        try:
            self._take_located(loc.locate([rest[0], rest[-1]]), found)
        except (PackGone, CorruptObject):
            self.drop_locator()
            return None
        if len(found) != 2:
            return None
        (name, a), (last, b) = found[rest[0]], found[rest[-1]]
        end = self.ends.get((last, b))
        if name != last or end is None or not a < b or \
                end - a > min(SPAN, _RUN_PER_OBJECT * len(rest)):
            return None
        return self.range(name, a, end, [(a, rest[0]), (b, rest[-1])])

    def range(self, name: str, start: int, end: int, entries: list[tuple[int, bytes]]) -> Range:
        """A range of the pack of idx `name` decoded whole (Range.everything)."""
        entry = self.packs[name]
        return Range(name, pack_key(self.name, entry.pack.name), entry.pack.size - 20, start,
                     end, entries, everything=True)

