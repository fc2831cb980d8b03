"""Loose objects written by git itself read back byte for byte."""

from __future__ import annotations

import random
import subprocess
import zlib
from pathlib import Path

import pytest

from ketch.errors import CorruptObject
from ketch.git import objects as gobj
from ketch.git.loose import (
    CorruptLooseObject,
    iter_loose_ids,
    loose_exists,
    loose_header,
    loose_path,
    read_loose,
)
from tests.gitutil import git


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def hash_object(repo: Path, kind: str, data: bytes) -> bytes:
    out = git(repo, "hash-object", "-w", "-t", kind, "--stdin", "--literally", input=data)
    return bytes.fromhex(out.strip().decode())


def test_objects_of_every_type_read_back(repo: Path) -> None:
    r = random.Random(1)
    blobs = [b"", b"hello\n", r.randbytes(100_000), bytes(300_000)]
    written: dict[bytes, tuple[int, bytes]] = {}
    for data in blobs:
        written[hash_object(repo, "blob", data)] = (gobj.BLOB, data)
    blob_id = next(iter(written))
    tree = gobj.encode_tree([gobj.TreeEntry(gobj.MODE_FILE, b"f", blob_id)])
    written[hash_object(repo, "tree", tree)] = (gobj.TREE, tree)
    tree_id = gobj.object_id(gobj.TREE, tree)
    commit = gobj.encode_commit(tree_id, [], b"A <a@b>", 1_700_000_000, b"+0000", b"msg\n")
    written[hash_object(repo, "commit", commit)] = (gobj.COMMIT, commit)
    commit_id = gobj.object_id(gobj.COMMIT, commit)
    tag = b"object %s\ntype commit\ntag v1\ntagger A <a@b> 1700000000 +0000\n\nt\n" % (
        commit_id.hex().encode()
    )
    written[hash_object(repo, "tag", tag)] = (gobj.TAG, tag)

    objects = repo / "objects"
    for oid, expected in written.items():
        assert loose_exists(objects, oid)
        assert read_loose(objects, oid, verify=True) == expected
        assert loose_header(objects, oid) == (expected[0], len(expected[1]))
    assert sorted(iter_loose_ids(objects)) == sorted(written)
    assert git(repo, "cat-file", "-p", commit_id.hex()) == commit


def test_missing_objects(repo: Path) -> None:
    objects = repo / "objects"
    oid = bytes.fromhex("e69de29bb2d1d6434b8b29ae775ad8c2e48c5391")
    assert read_loose(objects, oid) is None
    assert loose_header(objects, oid) is None
    assert not loose_exists(objects, oid)
    assert list(iter_loose_ids(objects)) == []
    assert read_loose(repo / "nonexistent", oid) is None


def test_iter_skips_git_temp_files_and_packs(repo: Path) -> None:
    oid = hash_object(repo, "blob", b"x\n")
    d = repo / "objects" / oid.hex()[:2]
    (d / "tmp_obj_abc123").write_bytes(b"junk")
    (repo / "objects" / "zz").mkdir()
    git(repo, "hash-object", "-w", "--stdin", input=b"y\n")
    ids = list(iter_loose_ids(repo / "objects"))
    assert oid in ids and len(ids) == 2


def write_raw(repo: Path, oid: bytes, raw: bytes) -> Path:
    path = Path(loose_path(repo / "objects", oid))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize(
    "raw, match",
    [
        (zlib.compress(b"blob 5\0abc"), "header says 5"),
        (zlib.compress(b"blob 2\0abc"), "header says 2"),
        (zlib.compress(b"blub 3\0abc"), "unknown object type"),
        (zlib.compress(b"blob 03\0abc"), "bad object size"),
        (zlib.compress(b"blob x\0abc"), "bad object size"),
        (zlib.compress(b"blob 3abc"), "no object header"),
        (zlib.compress(b"blob 3\0abc")[:-3], "truncated"),
        (b"not zlib at all", "zlib error"),
    ],
)
def test_corrupt_loose_objects(repo: Path, raw: bytes, match: str) -> None:
    oid = b"\x12" * 20
    write_raw(repo, oid, raw)
    with pytest.raises(CorruptLooseObject, match=match):
        read_loose(repo / "objects", oid)
    assert issubclass(CorruptLooseObject, CorruptObject)


def test_verify_catches_a_misnamed_file(repo: Path) -> None:
    liar = b"\x34" * 20
    write_raw(repo, liar, zlib.compress(b"blob 3\0abc"))
    assert read_loose(repo / "objects", liar) == (gobj.BLOB, b"abc")
    with pytest.raises(CorruptLooseObject, match="hash to"):
        read_loose(repo / "objects", liar, verify=True)
