"""The connectivity check behind the server's update-ref: a ref never lands on a
commit that reaches a missing object, however deep."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ketch.errors import KetchError
from ketch.git import objects as gobj
from ketch.lease import held_leases
from ketch.lifecycle.connect import missing_objects
from ketch.localrepo import LocalRepository, init_repository
from ketch.remote.location import open_location
from ketch.repo import WritableRepository

BRANCH = b"refs/heads/m"


def _commit(tree: bytes, parents: list[bytes]) -> bytes:
    return gobj.encode_commit(tree, parents, b"T <t@example.invalid>", 1_700_000_000, b"+0000",
                              b"test\n")


def _tree(**entries: tuple[int, bytes]) -> bytes:
    return gobj.encode_tree(gobj.TreeEntry(mode, name.encode(), oid)
                            for name, (mode, oid) in entries.items())


def _save(repo: WritableRepository, files: dict[str, bytes], skip: set[str],
          parent: bytes | None) -> bytes:
    """A commit of sub/deep/<name> files; blobs named in `skip` are not written."""
    w = repo.writer()
    deep = {}
    for name, data in files.items():
        oid = gobj.object_id(gobj.BLOB, data)
        if name not in skip:
            w.write(gobj.BLOB, data)
        deep[name] = (gobj.MODE_FILE, oid)
    t_deep = w.write(gobj.TREE, _tree(**deep))
    t_sub = w.write(gobj.TREE, _tree(deep=(gobj.MODE_TREE, t_deep)))
    keep = w.write(gobj.BLOB, b"top\n")
    root = w.write(gobj.TREE, _tree(sub=(gobj.MODE_TREE, t_sub), top=(gobj.MODE_FILE, keep)))
    c = w.write(gobj.COMMIT, _commit(root, [parent] if parent else []))
    w.close()
    return c


@pytest.fixture
def repo(tmp_path: Path) -> LocalRepository:
    init_repository(str(tmp_path / "r"))
    return LocalRepository(str(tmp_path / "r"))


def test_a_complete_save_has_nothing_missing(repo: LocalRepository) -> None:
    c1 = _save(repo, {"a": b"1", "b": b"2"}, set(), None)
    assert missing_objects(repo, c1, None) == []
    c2 = _save(repo, {"a": b"1", "b": b"3"}, set(), c1)
    assert missing_objects(repo, c2, c1) == []


def test_a_missing_blob_three_trees_down_is_found(repo: LocalRepository) -> None:
    c1 = _save(repo, {"a": b"1", "b": b"2"}, set(), None)
    c2 = _save(repo, {"a": b"1", "b": b"lost"}, {"b"}, c1)
    assert missing_objects(repo, c2, c1) == [gobj.object_id(gobj.BLOB, b"lost")]
    assert missing_objects(repo, c2, None) == [gobj.object_id(gobj.BLOB, b"lost")]


def test_a_missing_object_in_a_rewritten_history_is_found(repo: LocalRepository) -> None:
    """A prune's new chain: the old head is not an ancestor of the new one."""
    c1 = _save(repo, {"a": b"1"}, set(), None)
    c2 = _save(repo, {"a": b"2"}, set(), c1)
    w = repo.writer()
    base = gobj.decode_commit(repo.read(c1)[1]).tree
    broken = w.write(gobj.COMMIT, _commit(base, []))
    w.close()
    c3 = _save(repo, {"a": b"gone"}, {"a"}, broken)
    assert missing_objects(repo, c3, c2) == [gobj.object_id(gobj.BLOB, b"gone")]


def test_the_server_refuses_a_commit_that_reaches_a_missing_object(tmp_path: Path) -> None:
    path = tmp_path / "served"
    init_repository(str(path))
    remote = open_location(f":{path}", kind="remote").writable()
    try:
        c1 = _save(remote, {"a": b"1"}, set(), None)
        remote.update_ref(BRANCH, c1, None)
        c2 = _save(remote, {"a": b"1", "b": b"never sent"}, {"b"}, c1)
        with pytest.raises(KetchError, match="refers to missing objects"):
            remote.update_ref(BRANCH, c2, c1)
        assert remote.read_ref(BRANCH) == c1
    finally:
        remote.close()
    fsck = subprocess.run(["git", "--git-dir", str(path), "fsck", "--strict"],
                          capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stderr


def _retire_all_packs(path: Path) -> None:
    """What gc does to packs it will delete: out of the pack directory."""
    doomed = path / "ketch-gc" / "doomed"
    doomed.mkdir(parents=True, exist_ok=True)
    pack_dir = path / "objects" / "pack"
    for f in sorted(pack_dir.iterdir()):
        if f.suffix in (".idx", ".pack"):
            f.rename(doomed / f.name)


def test_retiring_packs_are_read_but_never_deduplicated_against(tmp_path: Path) -> None:
    path = tmp_path / "r"
    init_repository(str(path))
    with LocalRepository(str(path)) as repo:
        c1 = _save(repo, {"a": b"kept by a racing save"}, set(), None)
    _retire_all_packs(path)
    blob = gobj.object_id(gobj.BLOB, b"kept by a racing save")
    with LocalRepository(str(path)) as repo:
        assert repo.read(blob) == (gobj.BLOB, b"kept by a racing save")
        assert not repo.exists(blob) and repo.has_many([blob]) == [False]
        assert repo.stored_many([blob]) == [True]
        assert repo.read_typed(c1, gobj.COMMIT)


def test_the_server_accepts_a_racing_save_whose_objects_gc_is_retiring(tmp_path: Path) -> None:
    """A save that began before gc hid a pack may count on an object in it; gc
    copies such objects back before it deletes anything, so the ref may move."""
    path = tmp_path / "served"
    init_repository(str(path))
    with LocalRepository(str(path)) as repo:
        _save(repo, {"a": b"old content"}, set(), None)
    _retire_all_packs(path)
    remote = open_location(f":{path}", kind="remote").writable()
    try:
        c = _save(remote, {"a": b"old content", "b": b"new"}, {"a"}, None)
        remote.update_ref(BRANCH, c, None)
        assert remote.read_ref(BRANCH) == c
    finally:
        remote.close()


def test_the_server_holds_a_lease_for_its_writing_client(tmp_path: Path) -> None:
    """A remote save takes no lease of its own: its server session holds one, from
    its first look at the idx files until the connection ends."""
    path = tmp_path / "served"
    init_repository(str(path))
    remote = open_location(f":{path}", kind="remote").writable()
    try:
        assert remote.read_ref(BRANCH) is None
        assert held_leases(str(path)) == []  # reading only: gc need not wait
        c = _save(remote, {"a": b"1"}, set(), None)
        assert remote.has_many([c]) == [True]
        assert len(held_leases(str(path))) == 1
        remote.update_ref(BRANCH, c, None)
        assert len(held_leases(str(path))) == 1
    finally:
        remote.close()
    deadline = time.monotonic() + 30
    while held_leases(str(path)) and time.monotonic() < deadline:
        time.sleep(0.05)  # the server process ends after the client
    assert held_leases(str(path)) == []
