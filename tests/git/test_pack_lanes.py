"""Metadata packs: trees, commits and the blobs marked metadata go to packs of
their own (a reader of a save's trees reads a few packs, not the whole of the
data), a small session's metadata joins its data pack, and a metadata pack
never becomes visible before the data its trees name."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ketch.git import objects as gobj
from ketch.git.idx import PackIndex
from ketch.git.pack import PackWriter
from tests.gitutil import git

MB = 1 << 20


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    r = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(r)], check=True)
    return r


def _types(repo: Path) -> list[set[str]]:
    """The object types of each pack (git's own reading of them)."""
    out = []
    for p in sorted((repo / "objects" / "pack").glob("*.idx")):
        lines = git(repo, "verify-pack", "-v", str(p)).decode().splitlines()
        out.append({f[1] for f in map(str.split, lines)
                    if len(f) > 2 and f[1] in ("blob", "tree", "commit", "tag")})
    return out


def _save_like(w: PackWriter, files: int, size: int) -> tuple[set[bytes], set[bytes]]:
    """Blobs of file data, then a tree naming them with a `.bupm` marked
    metadata, as a save writes them: (data ids, metadata ids)."""
    data, meta = set(), set()
    entries = []
    for i in range(files):
        oid = w.write(gobj.BLOB, os.urandom(size))
        data.add(oid)
        entries.append(gobj.TreeEntry(gobj.MODE_FILE, b"f%04d" % i, oid))
    bupm = w.write(gobj.BLOB, b"metadata %d" % files, metadata=True)
    meta.add(bupm)
    entries.append(gobj.TreeEntry(gobj.MODE_FILE, b".bupm", bupm))
    meta.add(w.write(gobj.TREE, gobj.encode_tree(entries)))
    return data, meta


def test_big_sessions_keep_metadata_in_a_pack_of_its_own(bare: Path) -> None:
    with PackWriter(str(bare / "objects")) as w:
        data, meta = _save_like(w, 12, MB)
    closed = [PackIndex(p) for p in sorted((bare / "objects" / "pack").glob("*.idx"))]
    held = [{oid for oid, _, _ in ix.iter_entries()} for ix in closed]
    assert sorted(map(len, held)) == [len(meta), len(data)]
    assert meta in held and data in held
    assert sorted(map(sorted, _types(bare))) == [["blob"], ["blob", "tree"]]
    git(bare, "fsck", "--strict")


def test_a_small_session_is_one_pack(bare: Path) -> None:
    with PackWriter(str(bare / "objects")) as w:
        data, meta = _save_like(w, 20, 4096)
    idx = list((bare / "objects" / "pack").glob("*.idx"))
    assert len(idx) == 1
    assert {oid for oid, _, _ in PackIndex(idx[0]).iter_entries()} == data | meta
    git(bare, "fsck", "--strict")


def test_a_metadata_pack_never_shows_before_its_data(bare: Path) -> None:
    """Metadata packs closing at the object limit, many times over: at each
    one, every blob its trees name is already in a visible pack."""
    visible: set[bytes] = set()
    checked = 0

    def on_pack(idx_path: str) -> None:
        nonlocal checked
        ids = {oid for oid, _, _ in PackIndex(idx_path).iter_entries()}
        visible.update(ids)
        for oid in ids:
            t, body = gobj_read(oid)
            if t == gobj.TREE:
                for e in gobj.decode_tree(body):
                    assert e.oid in visible, "a tree is visible before its blob"
                checked += 1

    written: dict[bytes, tuple[int, bytes]] = {}

    def gobj_read(oid: bytes) -> tuple[int, bytes]:
        return written[oid]

    # Three trees to a blob: the metadata lane fills (and closes) three times
    # as fast as the data lane, whose open pack holds the blobs it names.
    with PackWriter(str(bare / "objects"), max_pack_objects=50, on_pack=on_pack) as w:
        for d in range(100):
            body = os.urandom(100) + bytes([d])
            oid = w.write(gobj.BLOB, body)
            written[oid] = (gobj.BLOB, body)
            for level in range(3):
                tree = gobj.encode_tree([gobj.TreeEntry(
                    gobj.MODE_TREE if level else gobj.MODE_FILE, b"x", oid)])
                oid = w.write(gobj.TREE, tree)
                written[oid] = (gobj.TREE, tree)
    assert checked == 300
    git(bare, "fsck", "--strict")
