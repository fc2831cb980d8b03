"""What `ketch mirror push` reads of a local repository: a snapshot of its refs,
then of its packs (with their idx and parity files), and its loose objects
packed, deterministically, into one pack of their own (ketch.offsite.push
says why refs come first)."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from ketch.errors import KetchError, NotARepository
from ketch.git.idx import write_idx_v2
from ketch.git.loose import iter_loose_ids, read_loose
from ketch.git.pack import encode_entry
from ketch.git.refs import Refs
from ketch.integrity import parity
from ketch.offsite.manifest import check_repo_name

_LOOSE_LEVEL = 6  # fixed, so the loose-object pack is the same bytes every time


def is_repo(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, d)) for d in ("objects", "refs"))


@dataclass
class LocalFile:
    path: str
    size: int
    mtime: int = 0  # nanoseconds: packs of one save are written within a second
    sha256: str | None = None  # computed on demand: hashing a big pack is not free

    def digest(self) -> str:
        if self.sha256 is None:
            with open(self.path, "rb") as f:
                self.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
        return self.sha256


@dataclass
class Snapshot:
    name: str
    path: str
    head: str
    refs: dict[str, str]
    config: str
    files: dict[str, LocalFile]  # file name in objects/pack -> local file
    loose: int = 0


def _read_text(path: str, default: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return default


def snapshot(path: str, tmpdir: str) -> Snapshot:
    """Refs first, then packs (ketch.offsite.push's docstring says why)."""
    name = check_repo_name(os.path.basename(os.path.normpath(os.path.abspath(path))))
    if not is_repo(path):
        raise NotARepository(f"{path}: not a repository")
    if os.path.exists(os.path.join(path, "objects", "info", "alternates")):
        raise KetchError(f"{path}: borrows objects from another repository (objects/info/"
                         "alternates); run 'git repack -a -d' in it before mirroring")
    refs = {n.decode("utf-8", "surrogateescape"): oid.hex()
            for n, oid in Refs(path).iter_refs(b"refs/")}
    head = _read_text(os.path.join(path, "HEAD"), "ref: refs/heads/master\n").strip()
    config = _read_text(os.path.join(path, "config"), "")
    pack_dir = os.path.join(path, "objects", "pack")
    files: dict[str, LocalFile] = {}
    try:
        names = set(os.listdir(pack_dir))
    except FileNotFoundError:
        names = set()
    for n in sorted(names):
        # A pack without its idx is still being written and nothing refers to it yet.
        if n.startswith("pack-") and n.endswith(".pack") and n[:-5] + ".idx" in names:
            pack = os.path.join(pack_dir, n)
            # Parity only as a complete set (a generate may be under way).
            par = parity.parity_files(pack) if parity.has_parity(pack) else []
            for fn in (n, n[:-5] + ".idx", *(os.path.basename(p) for p in par)):
                st = os.stat(os.path.join(pack_dir, fn))
                files[fn] = LocalFile(os.path.join(pack_dir, fn), st.st_size, st.st_mtime_ns)
    snap = Snapshot(name, path, head, refs, config, files)
    objects_dir = os.path.join(path, "objects")
    ids = sorted(iter_loose_ids(objects_dir))
    if ids:
        pack, idx, snap.loose = pack_loose(objects_dir, ids, tmpdir)
        for p in (pack, idx):
            files[os.path.basename(p)] = LocalFile(p, os.path.getsize(p))
    return snap


def pack_loose(objects_dir: str, ids: list[bytes], tmpdir: str) -> tuple[str, str, int]:
    """Pack loose objects, deterministically; (pack path, idx path, object count)."""
    encoded: list[tuple[bytes, bytes, int]] = []
    for oid in ids:
        got = read_loose(objects_dir, oid, verify=True)
        if got is not None:  # pruned while we looked: unreachable, so not needed
            enc, crc, _ = encode_entry(got[0], got[1], _LOOSE_LEVEL)
            encoded.append((oid, enc, crc))
    h = hashlib.sha1()
    tmp = os.path.join(tmpdir, "loose.pack")
    entries = []
    with open(tmp, "wb") as f:
        head = b"PACK" + struct.pack(">II", 2, len(encoded))
        f.write(head)
        h.update(head)
        offset = len(head)
        for oid, enc, crc in encoded:
            f.write(enc)
            h.update(enc)
            entries.append((oid, crc, offset))
            offset += len(enc)
        sha = h.digest()
        f.write(sha)
    stem = os.path.join(tmpdir, f"pack-{sha.hex()}")
    os.replace(tmp, stem + ".pack")
    with open(stem + ".idx", "wb") as f:
        write_idx_v2(f, entries, sha)
    return stem + ".pack", stem + ".idx", len(encoded)
