"""The pack writer: objects go straight into a pack v2 file, never loose.

Encoding (batches, the thread pool, the order) is `packenc.PackEncoder`; this
module is where the encoded entries go locally: appended to the pack in
submission order. At close the object count is patched into the header,
the pack's SHA-1 computed, the v2 idx written, both fsync'd and renamed into
objects/pack/ (pack first, idx last: git and bup only see a pack once its idx is
there). A crash leaves at most a stray temp directory, never a pack without idx.
An abort keeps the complete objects handed over so far (see `abort`): the
writer's state changes in `held()` sections that a stop signal cannot cut.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import mmap
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Sequence
from typing import BinaryIO

from ketch.git.durable import fsync_dir, start_writeback
from ketch.git.idx import write_idx_v2_flat
from ketch.git.packenc import DATA, METADATA, EncodingWriter, PackEncoder
from ketch.git.packenc import encode_entry as encode_entry
from ketch.git.packenc import entry_header as entry_header
from ketch.git.packenc import zlib_stored as zlib_stored
from ketch.interrupt import held

DEFAULT_MAX_PACK_SIZE = 1_000_000_000
DEFAULT_LEVEL = 1
# Written data is handed to the disk every this many bytes (sync_file_range,
# as borg does), so the fsync at close waits for the last stretch only, not a
# whole pack's worth of dirty pages (~1.2 s for 1 GB here).
_WRITEBACK = 16 << 20
# A session's metadata pack joins its data pack when the two are smaller than
# this: a day's small save stays one pack, and its trees are a range or two.
_MERGE_BELOW = 8 << 20
_HASH_WINDOW = 8 << 20  # a multiple of mmap.ALLOCATIONGRANULARITY


def _sha1_of(fd: int, size: int) -> bytes:
    """SHA-1 of the first `size` bytes of the file, read back from the page
    cache (its header, written last, comes first): hashed straight from a map
    of one window at a time, which costs no copy (read() copies, and a new
    buffer per block faults its pages in) and keeps RSS to a window."""
    h = hashlib.sha1()
    for off in range(0, size, _HASH_WINDOW):
        with mmap.mmap(fd, min(_HASH_WINDOW, size - off), access=mmap.ACCESS_READ,
                       offset=off) as m:
            h.update(m)
    return h.digest()


class _Entries:
    """(oid, crc32, offset) of the open pack, packed flat: a 1 GB pack holds
    ~130k entries, which as Python tuples would cost ~25 MB."""

    def __init__(self) -> None:
        self.oids = bytearray()
        self.crcs = array.array("L")
        self.offsets = array.array("Q")

    def __len__(self) -> int:
        return len(self.crcs)

    def add(self, oid: bytes, crc: int, offset: int) -> None:
        self.oids += oid
        self.crcs.append(crc)
        self.offsets.append(offset)

    def extend(self, oids: list[bytes], meta: list[tuple[int, int]], offset: int) -> int:
        """Append entries laid back to back from `offset`; returns the end offset."""
        for oid, (n, crc) in zip(oids, meta, strict=True):
            self.oids += oid
            self.crcs.append(crc)
            self.offsets.append(offset)
            offset += n
        return offset


class _Lane:
    """One pack being written: its temporary file and entries."""

    def __init__(self) -> None:
        self.tmpdir: str | None = None
        self.file: BinaryIO | None = None
        self.entries = _Entries()
        self.offset = 0
        self.kicked = 0  # offset up to which writeback has been started

    @property
    def open(self) -> bool:
        return self.file is not None


class PackWriter(EncodingWriter):
    """Writes objects into packs under `objects/pack`, closing one at the size limits.

    File data and metadata (trees, commits, `.bupm`) go to packs of their own
    (`packenc`'s lanes); a session's metadata joins its data pack at the end
    when that is small (under 8 MB), so a small save is still one pack.

    `exists(oid)` tells whether the repository already has an object; such objects
    (and objects already written in this session) are never written again.
    `on_pack(idx_path)` runs after each pack is durable and visible.
    `tmp_dir` is where packs are written until then (default: objects/; gc
    writes into a directory of its own, so that it can clear what a killed gc
    left without touching a concurrent save's pack). It must be on the same
    filesystem as objects/pack.
    """

    def __init__(
        self,
        objects_dir: str,
        *,
        level: int = DEFAULT_LEVEL,
        max_pack_size: int = DEFAULT_MAX_PACK_SIZE,
        max_pack_objects: int | None = None,
        exists: Callable[[bytes], bool] | None = None,
        exists_many: Callable[[list[bytes]], Sequence[bool]] | None = None,
        on_pack: Callable[[str], None] | None = None,
        threads: int | None = None,
        fsync: bool = True,
        tmp_dir: str | None = None,
    ) -> None:
        self.objects_dir = objects_dir
        self.tmp_dir = tmp_dir or objects_dir
        self.pack_dir = os.path.join(objects_dir, "pack")
        self.level = level
        self.max_pack_size = max_pack_size
        self.max_pack_objects = max_pack_objects or max(1, max_pack_size // 5000)
        self._on_pack = on_pack
        self._fsync = fsync
        self._enc = PackEncoder(self._take, level=level, exists=exists,
                                exists_many=exists_many, threads=threads)
        self._lanes = (_Lane(), _Lane())
        self.closed_idx: list[str] = []
        self.objects_written = 0
        self.bytes_written = 0

    # -- writing ------------------------------------------------------------

    def write_raw(self, oid: bytes, encoded: bytes, crc: int) -> None:
        """Append an already-encoded pack entry (see PackEncoder.write_raw)."""
        self._enc.write_raw(oid, encoded, crc)

    def _take(self, oids: list[bytes], blob: bytes, meta: list[tuple[int, int]],
              lane: int) -> None:
        """The encoder's sink: a batch of entries, appended to its lane's pack."""
        total = len(blob)
        ln = self._lanes[lane]
        if (
            ln.file is not None
            and ln.offset + total < self.max_pack_size
            and len(ln.entries) + len(oids) < self.max_pack_objects
        ):
            # The whole batch fits in the open pack: one write.
            ln.file.write(blob)
            ln.offset = ln.entries.extend(oids, meta, ln.offset)
            self.objects_written += len(oids)
            self.bytes_written += total
            if ln.offset - ln.kicked >= _WRITEBACK:
                self._start_writeback(ln)
            return
        pos = 0
        view = memoryview(blob)
        for oid, (n, crc) in zip(oids, meta, strict=True):
            self._append(lane, oid, view[pos : pos + n], crc)
            pos += n

    def _append(self, lane: int, oid: bytes, enc: bytes | memoryview, crc: int) -> None:
        ln = self._lanes[lane]
        if ln.file is None:
            self._open(ln)
        assert ln.file is not None
        ln.file.write(enc)
        ln.entries.add(oid, crc, ln.offset)
        ln.offset += len(enc)
        self.objects_written += 1
        self.bytes_written += len(enc)
        if ln.offset >= self.max_pack_size or len(ln.entries) >= self.max_pack_objects:
            self._finish_lane(lane)
        elif ln.offset - ln.kicked >= _WRITEBACK:
            self._start_writeback(ln)

    def _open(self, ln: _Lane) -> None:
        os.makedirs(self.pack_dir, exist_ok=True)
        ln.tmpdir = tempfile.mkdtemp(prefix="pack-tmp-", dir=self.tmp_dir)
        ln.file = open(os.path.join(ln.tmpdir, "pack"), "w+b", buffering=1 << 20)  # noqa: SIM115
        ln.file.write(b"PACK" + struct.pack(">II", 2, 0))
        ln.offset = 12
        ln.kicked = 0
        ln.entries = _Entries()

    def _start_writeback(self, ln: _Lane) -> None:
        """Start writing what is in the page cache to disk, without waiting."""
        assert ln.file is not None
        if self._fsync:
            ln.file.flush()
            start_writeback(ln.file.fileno(), ln.kicked, ln.offset - ln.kicked)
        ln.kicked = ln.offset

    # -- closing ------------------------------------------------------------

    def _finish_lane(self, lane: int) -> None:
        """Close the lane's pack. A metadata pack's trees name data handed over
        before them: the open data pack is made durable first, so no crash
        leaves a tree whose blobs are in no pack."""
        if lane == METADATA:
            data = self._lanes[DATA]
            if data.entries:
                self._finish_pack(data)
        self._finish_pack(self._lanes[lane])

    def _merge_metadata(self) -> None:
        """Move the open metadata pack's entries to the end of the open data
        pack (entries are whole objects, not deltas: they move as they are)."""
        data, md = self._lanes
        assert data.file is not None and md.file is not None
        md.file.flush()
        shift = data.offset - 12
        pos = 12
        while pos < md.offset:
            block = os.pread(md.file.fileno(), min(8 << 20, md.offset - pos), pos)
            data.file.write(block)
            pos += len(block)
        for i in range(len(md.entries)):
            data.entries.add(bytes(md.entries.oids[20 * i : 20 * i + 20]), md.entries.crcs[i],
                             md.entries.offsets[i] + shift)
        data.offset += md.offset - 12
        self._drop(md)

    def _finish_pack(self, ln: _Lane) -> None:
        f, tmpdir = ln.file, ln.tmpdir
        assert f is not None and tmpdir is not None
        ln.file = None
        ln.tmpdir = None
        f.seek(8)
        f.write(struct.pack(">I", len(ln.entries)))
        f.flush()
        pack_sha = _sha1_of(f.fileno(), ln.offset)
        f.seek(0, os.SEEK_END)
        f.write(pack_sha)
        f.flush()
        if self._fsync:
            os.fsync(f.fileno())
        f.close()
        idx_tmp = os.path.join(tmpdir, "idx")
        with open(idx_tmp, "wb") as xf:
            write_idx_v2_flat(xf, ln.entries.oids, ln.entries.crcs, ln.entries.offsets, pack_sha)
            xf.flush()
            if self._fsync:
                os.fsync(xf.fileno())
        base = os.path.join(self.pack_dir, "pack-" + pack_sha.hex())
        os.rename(os.path.join(tmpdir, "pack"), base + ".pack")
        os.rename(idx_tmp, base + ".idx")
        if self._fsync:
            fsync_dir(self.pack_dir)
        os.rmdir(tmpdir)
        ln.entries = _Entries()
        self.closed_idx.append(base + ".idx")
        if self._on_pack is not None:
            self._on_pack(base + ".idx")

    def flush(self) -> list[str]:
        """Finish the open packs (data first); returns the idx paths closed so far."""
        self._enc.drain()
        with held():
            self._enc.busy = True
            data, md = self._lanes
            if (md.entries and data.entries
                    and data.offset + md.offset < min(_MERGE_BELOW, self.max_pack_size)
                    and len(data.entries) + len(md.entries) < self.max_pack_objects):
                self._merge_metadata()
            for ln in self._lanes:
                if ln.entries:
                    self._finish_pack(ln)
                else:
                    self._drop(ln)
            self._enc.busy = False
        return list(self.closed_idx)

    def close(self) -> list[str]:
        try:
            return self.flush()
        finally:
            self._enc.shutdown()

    def _drop(self, ln: _Lane) -> None:
        if ln.file is not None:
            ln.file.close()
            ln.file = None
        if ln.tmpdir is not None:
            shutil.rmtree(ln.tmpdir, ignore_errors=True)
            ln.tmpdir = None
        ln.entries = _Entries()

    def abort_current(self) -> None:
        for ln in self._lanes:
            self._drop(ln)

    def abort(self) -> None:
        """Stop writing, keeping the complete objects already handed over: the
        queued ones are encoded and the open packs finished, as a remote writer
        keeps what its server has, so a re-run does not write them again (an
        interrupted first backup of a big machine does not start from zero).
        If that cannot be done (an update was cut half-way, the disk is full),
        the unfinished packs are dropped; closed packs stay either way."""
        try:
            if not self._enc.busy:
                with contextlib.suppress(Exception):
                    self.flush()
        finally:
            self._enc.discard()
            self.abort_current()
            self._enc.shutdown()

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
