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
from ketch.git.packenc import EncodingWriter, PackEncoder
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


class PackWriter(EncodingWriter):
    """Writes objects into packs under `objects/pack`, closing one at the size limits.

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
        self._tmpdir: str | None = None
        self._file: BinaryIO | None = None
        self._entries = _Entries()
        self._offset = 0
        self._kicked = 0  # offset up to which writeback has been started
        self.closed_idx: list[str] = []
        self.objects_written = 0
        self.bytes_written = 0

    # -- writing ------------------------------------------------------------

    def write_raw(self, oid: bytes, encoded: bytes, crc: int) -> None:
        """Append an already-encoded pack entry (see PackEncoder.write_raw)."""
        self._enc.write_raw(oid, encoded, crc)

    def _take(self, oids: list[bytes], blob: bytes, meta: list[tuple[int, int]]) -> None:
        """The encoder's sink: a batch of entries, appended to the open pack."""
        total = len(blob)
        if (
            self._file is not None
            and self._offset + total < self.max_pack_size
            and len(self._entries) + len(oids) < self.max_pack_objects
        ):
            # The whole batch fits in the open pack: one write.
            self._file.write(blob)
            self._offset = self._entries.extend(oids, meta, self._offset)
            self.objects_written += len(oids)
            self.bytes_written += total
            if self._offset - self._kicked >= _WRITEBACK:
                self._start_writeback()
            return
        pos = 0
        view = memoryview(blob)
        for oid, (n, crc) in zip(oids, meta, strict=True):
            self._append(oid, view[pos : pos + n], crc)
            pos += n

    def _append(self, oid: bytes, enc: bytes | memoryview, crc: int) -> None:
        if self._file is None:
            self._open()
        assert self._file is not None
        self._file.write(enc)
        self._entries.add(oid, crc, self._offset)
        self._offset += len(enc)
        self.objects_written += 1
        self.bytes_written += len(enc)
        if self._offset >= self.max_pack_size or len(self._entries) >= self.max_pack_objects:
            self._finish_pack()
        elif self._offset - self._kicked >= _WRITEBACK:
            self._start_writeback()

    def _open(self) -> None:
        os.makedirs(self.pack_dir, exist_ok=True)
        self._tmpdir = tempfile.mkdtemp(prefix="pack-tmp-", dir=self.tmp_dir)
        self._file = open(os.path.join(self._tmpdir, "pack"), "w+b", buffering=1 << 20)  # noqa: SIM115
        self._file.write(b"PACK" + struct.pack(">II", 2, 0))
        self._offset = 12
        self._kicked = 0
        self._entries = _Entries()

    def _start_writeback(self) -> None:
        """Start writing what is in the page cache to disk, without waiting."""
        assert self._file is not None
        if self._fsync:
            self._file.flush()
            start_writeback(self._file.fileno(), self._kicked, self._offset - self._kicked)
        self._kicked = self._offset

    # -- closing ------------------------------------------------------------

    def _finish_pack(self) -> None:
        f, tmpdir = self._file, self._tmpdir
        assert f is not None and tmpdir is not None
        self._file = None
        self._tmpdir = None
        f.seek(8)
        f.write(struct.pack(">I", len(self._entries)))
        f.flush()
        pack_sha = _sha1_of(f.fileno(), self._offset)
        f.seek(0, os.SEEK_END)
        f.write(pack_sha)
        f.flush()
        if self._fsync:
            os.fsync(f.fileno())
        f.close()
        idx_tmp = os.path.join(tmpdir, "idx")
        with open(idx_tmp, "wb") as xf:
            write_idx_v2_flat(xf, self._entries.oids, self._entries.crcs,
                              self._entries.offsets, pack_sha)
            xf.flush()
            if self._fsync:
                os.fsync(xf.fileno())
        base = os.path.join(self.pack_dir, "pack-" + pack_sha.hex())
        os.rename(os.path.join(tmpdir, "pack"), base + ".pack")
        os.rename(idx_tmp, base + ".idx")
        if self._fsync:
            fsync_dir(self.pack_dir)
        os.rmdir(tmpdir)
        self._entries = _Entries()
        self.closed_idx.append(base + ".idx")
        if self._on_pack is not None:
            self._on_pack(base + ".idx")

    def flush(self) -> list[str]:
        """Finish the current pack (if any); returns the idx paths closed so far."""
        self._enc.drain()
        with held():
            self._enc.busy = True
            if self._file is not None:
                if self._entries:
                    self._finish_pack()
                else:
                    self.abort_current()
            self._enc.busy = False
        return list(self.closed_idx)

    def close(self) -> list[str]:
        try:
            return self.flush()
        finally:
            self._enc.shutdown()

    def abort_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self._entries = _Entries()

    def abort(self) -> None:
        """Stop writing, keeping the complete objects already handed over: the
        queued ones are encoded and the open pack finished, as a remote writer
        keeps what its server has, so a re-run does not write them again (an
        interrupted first backup of a big machine does not start from zero).
        If that cannot be done (an update was cut half-way, the disk is full),
        the unfinished pack is dropped; closed packs stay either way."""
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
