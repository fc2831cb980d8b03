"""Property: damaged pack files (read through PackFile with their valid idx),
trees and commits raise only KetchError subclasses (CorruptObject), within a
bounded allocation. Valid inputs come from the real writers (PackWriter,
encode_tree, commit_bytes); tests/fuzzutil.py damages them.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ketch import commits
from ketch.git import objects as gobj
from ketch.git.objects import BLOB, TREE, TreeEntry
from ketch.git.pack import PackWriter
from ketch.git.packread import PackFile
from tests.fuzzutil import bounded_allocation, fuzz_settings, mutated, only_ketch_errors


class Packed:
    def __init__(self, root: Path) -> None:
        objects = root / "objects"
        (objects / "pack").mkdir(parents=True)
        r = random.Random(5)
        with PackWriter(str(objects), fsync=False) as w:
            blobs = [r.randbytes(r.randrange(0, 3000)) for _ in range(12)]
            self.ids = [w.write(BLOB, b) for b in blobs]
            self.ids.append(w.write(TREE, gobj.encode_tree(
                TreeEntry(gobj.MODE_FILE, b"f%d" % i, oid) for i, oid in enumerate(self.ids))))
        (self.pack,) = (objects / "pack").glob("*.pack")
        self.idx = self.pack.with_suffix(".idx")
        self.bytes = self.pack.read_bytes()
        self.scratch = root / "scratch"
        self.scratch.mkdir()
        shutil.copy(self.idx, self.scratch / self.idx.name)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Packed:
    return Packed(tmp_path_factory.mktemp("packed"))


def _read_all(pack: Path, ids: list[bytes]) -> None:
    with PackFile(pack) as pf:
        for oid in ids:
            only_ketch_errors(lambda oid=oid: pf.read(oid, verify=True))  # type: ignore[misc]
            only_ketch_errors(lambda oid=oid: pf.header(oid))  # type: ignore[misc]
        for _ in pf.iter_objects(verify=True):
            pass


@fuzz_settings(60)
@given(data=st.data())
def test_damaged_pack_entries(packed: Packed, data: st.DataObject) -> None:
    damaged = data.draw(mutated(packed.bytes))
    target = packed.scratch / packed.pack.name
    target.write_bytes(damaged)
    with bounded_allocation():
        only_ketch_errors(lambda: _read_all(target, packed.ids))


def _tree() -> bytes:
    r = random.Random(7)
    modes = [gobj.MODE_FILE, gobj.MODE_EXEC, gobj.MODE_SYMLINK, gobj.MODE_TREE]
    return gobj.encode_tree(
        TreeEntry(r.choice(modes), b"name-%d.bupm" % i, r.randbytes(20)) for i in range(6))


VALID_TREE = _tree()
VALID_COMMIT = commits.commit_bytes(bytes(range(20)), bytes(20), 1_700_000_000,
                                    commits.argv_message("ketch save", ["ketch", "save", "/"]))


@fuzz_settings(100)
@given(mutated(VALID_TREE) | st.binary(max_size=80))
@example(b"100644 name\0short")
@example(b"10x644 name\0" + bytes(20))
@example(b"100644 no-nul")
def test_damaged_trees(data: bytes) -> None:
    with bounded_allocation():
        only_ketch_errors(lambda: list(gobj.decode_tree(data)))


@fuzz_settings(100)
@given(mutated(VALID_COMMIT) | st.binary(max_size=80))
@example(b"tree \xff\n\n")
@example(b"tree 0011\n\n")
@example(b"tree " + b"00" * 20 + b"\nauthor nobody\n\n")
@example(b"tree " + b"00" * 20 + b"\nauthor a <b> x +0000\n\n")
def test_damaged_commits(data: bytes) -> None:
    with bounded_allocation():
        only_ketch_errors(lambda: gobj.decode_commit(data))


def test_malformed_objects_stay_value_errors() -> None:
    """Callers that caught ValueError before (vfs, cat-file) still do."""
    with pytest.raises(ValueError, match="commit with a bad object id"):
        gobj.decode_commit(b"tree \xff\n\n")
