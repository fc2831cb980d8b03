"""bup's tree format (bup-format.md 2), in one place: how a file system name
becomes a tree entry name and back, and how a directory's tree is assembled
(its entries plus `.bupm`, the metadata stream that describes them)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from ketch import split as hs
from ketch.git import objects as gobj


class BatchSink(hs.ObjectSink, Protocol):
    def write_many(self, type_num: int, datas: Sequence[bytes | memoryview], *,
                   metadata: bool = False) -> list[bytes]:
        """`metadata`: blobs that belong with the trees (`.bupm`), packed apart
        from file data where the writer can."""
        ...


def mangle(name: bytes, is_chunked: bool) -> bytes:
    """bup's tree entry name for a filesystem name (bup-format.md 2.4)."""
    if is_chunked:
        return name + b".bup"
    if name.endswith(b".bup") or name[:-1].endswith(b".bup"):
        return name + b".bupl"
    return name


def demangle(name: bytes, gitmode: int) -> tuple[bytes, bool]:
    """(file system name, chunked?) of a tree entry, exactly as bup 0.33 reads it."""
    if name.endswith(b".bupl"):
        return name[:-5], False
    if name.endswith(b".bup"):
        return name[:-4], True
    if name.endswith(b".bupm"):
        return name[:-5], gitmode == gobj.MODE_TREE
    return name, False


def lookup(entries: Iterable[gobj.TreeEntry], name: bytes) -> tuple[gobj.TreeEntry, bool] | None:
    """The entry a file system name is stored under (its own name first, then the
    mangled forms), and whether it is a chunked file."""
    by_name = {e.name: e for e in entries}
    for candidate in (name, name + b".bupl", name + b".bup"):
        if candidate in by_name:
            return by_name[candidate], candidate == name + b".bup"
    return None


def add_chunks(sink: BatchSink, tree: hs.ChunkTree, chunks: list[tuple[memoryview, int]],
               oids: list[bytes] | None = None, *, metadata: bool = False) -> None:
    """Store chunks (unless `oids` says they are stored) and add them to a file's tree."""
    if not chunks:
        return
    if oids is None:
        oids = sink.write_many(gobj.BLOB, [c for c, _ in chunks], metadata=metadata)
    tree.add_many(gobj.MODE_FILE, oids, [len(c) for c, _ in chunks], [lv for _, lv in chunks])


def chunks_object(sink: BatchSink, chunks: list[tuple[memoryview, int]],
                  oids: list[bytes] | None = None, *, metadata: bool = False
                  ) -> tuple[int, bytes]:
    """bup's object for a whole file's chunks: (gitmode, oid)."""
    tree = hs.ChunkTree(sink)
    add_chunks(sink, tree, chunks, oids, metadata=metadata)
    return hs.top_object(sink, tree.top())


def store_bytes(sink: BatchSink, data: bytes) -> tuple[int, bytes]:
    """Chunk a small in-memory stream (a .bupm) as a file: (gitmode, oid)."""
    sp = hs.Splitter(4)
    return chunks_object(sink, list(sp.feed(data)) + list(sp.finish()), metadata=True)


def write_dir_tree(sink: BatchSink, dir_record: bytes, entries: list[gobj.TreeEntry],
                   records: list[tuple[bytes, bytes]]) -> bytes:
    """A directory's tree: `entries`, and the `.bupm` holding the directory's own
    record first, then one per non-directory (`records`: (name, record)) in
    unmangled-name order."""
    records.sort(key=lambda r: r[0])
    bupm = dir_record + b"".join(r for _, r in records)
    bupm_mode, bupm_oid = store_bytes(sink, bupm)
    return sink.write(gobj.TREE, gobj.encode_tree(
        [*entries, gobj.TreeEntry(bupm_mode, b".bupm", bupm_oid)]))
