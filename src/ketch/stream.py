"""Streams in and out of a repository: `split` (bytes -> chunks -> tree -> commit)
and `join` (commit, tree or blob -> the bytes back)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ketch import split as hs
from ketch.buptree import BatchSink, lookup, mangle
from ketch.commits import argv_message
from ketch.errors import KetchError, RefNotFound
from ketch.git import objects as gobj
from ketch.git.refs import validate_branch_name
from ketch.progress import NullProgress, Progress
from ketch.repo import ObjectWriter, Repository, WritableRepository
from ketch.snapshot import write_snapshot

SplitMode = str  # "blobs" | "tree" | "commit" | "name" | "noop"


class HashOnlySink:
    """A sink for --noop: computes ids, stores nothing."""

    def write(self, type_num: int, data: bytes | memoryview, *,
              metadata: bool = False) -> bytes:
        return gobj.object_id(type_num, data)

    def write_many(self, type_num: int, datas: Sequence[bytes | memoryview], *,
                   metadata: bool = False) -> list[bytes]:
        return [gobj.object_id(type_num, d) for d in datas]


def _counted(blocks: Iterable[bytes], progress: Progress) -> Iterator[bytes]:
    for b in blocks:
        progress.advance(len(b))
        yield b


def input_blocks(inputs: list[BinaryIO], progress: Progress) -> list[Iterator[bytes]]:
    """One block iterator per input, each read in bup's 8 MiB blocks."""
    return [_counted(hs.read_blocks(f), progress) for f in inputs]


def _chunk_groups(per_file: list[Iterator[bytes]], fanbits: int, keep: bool
                  ) -> Iterator[list[tuple[memoryview, int]]]:
    """The chunks of each read block together, so they are stored as one batch."""
    streams = per_file if keep else [itertools.chain.from_iterable(per_file)]
    for blocks in streams:
        splitter = hs.Splitter(fanbits)
        for block in blocks:
            yield list(splitter.feed(block))
        yield list(splitter.finish())


def split_blobs(
    sink: BatchSink, per_file: list[Iterator[bytes]], keep: bool
) -> Iterator[tuple[bytes, int]]:
    """bup split -b: (blob id, size) per chunk."""
    for group in _chunk_groups(per_file, 0, keep):
        oids = sink.write_many(gobj.BLOB, [c for c, _ in group])
        for oid, (data, _) in zip(oids, group, strict=True):
            yield oid, len(data)


def split_top(
    sink: BatchSink, per_file: list[Iterator[bytes]], fanbits: int, keep: bool
) -> list[tuple[int, bytes, int]]:
    """The top list of the chunk tree (see split.ChunkTree)."""
    tree = hs.ChunkTree(sink)
    for group in _chunk_groups(per_file, fanbits, keep):
        oids = sink.write_many(gobj.BLOB, [c for c, _ in group])
        for oid, (data, level) in zip(oids, group, strict=True):
            tree.add(gobj.MODE_FILE, oid, len(data), level)
    return tree.top()


@dataclass
class SplitResult:
    tree: bytes | None = None
    commit: bytes | None = None
    ref: bytes | None = None
    size: int = 0


def split_to_repo(
    repo: WritableRepository | None,
    inputs: list[BinaryIO],
    *,
    name: str | None,
    tree: bool,
    commit: bool,
    blobs: bool,
    fanout: int = hs.DEFAULT_FANOUT,
    keep_boundaries: bool = False,
    level: int = 1,
    date: float | None = None,
    argv: list[str] | None = None,
    on_blob: Callable[[bytes], None] | None = None,
    progress: Progress | None = None,
    max_pack_size: int | None = None,
    max_pack_objects: int | None = None,
) -> SplitResult:
    """Everything `ketch split` does; `repo=None` means --noop."""
    progress = progress or NullProgress()
    if blobs and (tree or commit or name):
        raise KetchError("-b cannot be combined with -t, -c or -n")
    if name is not None:
        validate_branch_name(name.encode())
    fanbits = hs.fanbits_for(fanout)
    result = SplitResult()
    per_file = input_blocks(inputs, progress)
    if repo is None:
        sink: BatchSink = HashOnlySink()
        _split_into(sink, per_file, result, name, tree, commit, blobs, fanbits,
                    keep_boundaries, on_blob)
        return result

    def build(w: ObjectWriter) -> bytes | None:
        _split_into(w, per_file, result, name, tree, commit, blobs, fanbits,
                    keep_boundaries, on_blob)
        return result.tree

    snap = write_snapshot(
        repo, name, build, message=argv_message("ketch split", argv or ["ketch", "split"]),
        reflog=b"ketch split", date=date, commit=commit, progress=progress, level=level,
        max_pack_size=max_pack_size, max_pack_objects=max_pack_objects)
    result.commit, result.ref = snap.commit, snap.ref
    return result


def _split_into(sink: BatchSink, per_file: list[Iterator[bytes]], result: SplitResult,
                name: str | None, tree: bool, commit: bool, blobs: bool, fanbits: int,
                keep: bool, on_blob: Callable[[bytes], None] | None) -> None:
    if blobs:
        for oid, size in split_blobs(sink, per_file, keep):
            result.size += size
            if on_blob is not None:
                on_blob(oid)
        return
    top = split_top(sink, per_file, fanbits, keep)
    result.size = sum(e[2] for e in top)
    if name is not None:
        mode, oid = hs.top_object(sink, top)
        entry = gobj.TreeEntry(mode, mangle(b"data", mode == gobj.MODE_TREE), oid)
        result.tree = sink.write(gobj.TREE, gobj.encode_tree([entry]))
    elif tree or commit:
        result.tree = hs.make_shalist_tree(sink, top)


# -- reading back -----------------------------------------------------------------


def iter_blob_data(repo: Repository, oid: bytes) -> Iterator[bytes]:
    """The bytes of a blob, a chunk tree (depth first), or a commit's tree."""
    stack = [oid]
    while stack:
        cur = stack.pop()
        t, data = repo.read(cur)
        if t == gobj.BLOB:
            yield data
        elif t == gobj.TREE:
            stack.extend(reversed([e.oid for e in gobj.decode_tree(data)
                                   if e.mode != gobj.MODE_GITLINK]))
        elif t == gobj.COMMIT:
            stack.append(gobj.decode_commit(data).tree)
        else:
            raise KetchError(f"cannot join a {gobj.TYPE_NAMES[t].decode()} object")


def join(repo: Repository, spec: bytes, out: BinaryIO) -> int:
    n = 0
    for block in iter_blob_data(repo, repo.resolve_ref(spec)):
        out.write(block)
        n += len(block)
    return n


def resolve_path(repo: Repository, spec: bytes) -> tuple[int, bytes]:
    """`ID`, `REF` or `REF:PATH` -> (mode, oid); PATH uses real or demangled names."""
    ref, sep, path = spec.partition(b":")
    oid = repo.resolve_ref(ref)
    if not sep:
        return 0, oid
    t, data = repo.read(oid)
    if t == gobj.COMMIT:
        oid = gobj.decode_commit(data).tree
    mode = gobj.MODE_TREE
    for part in [p for p in path.split(b"/") if p]:
        if mode != gobj.MODE_TREE:
            raise RefNotFound(f"not a directory on the way to {spec.decode(errors='replace')}")
        # A tree entry by name, trying bup's mangled forms (`.bup`, `.bupl`) too.
        found = lookup(gobj.decode_tree(repo.read_typed(oid, gobj.TREE)), part)
        if found is None:
            raise RefNotFound(f"no such path: {spec.decode(errors='replace')}")
        entry, chunked = found
        mode, oid = entry.mode, entry.oid
        if chunked:
            mode = gobj.MODE_FILE  # a chunked file reads as one file
    return mode, oid
