"""The Repository contract: every operation and every documented error, the same
tests on every backend (tests/contract_fixtures.py BACKENDS: a local directory,
a server over a real sshd, an S3 mirror on SeaweedFS).

`contract_repo` runs a test on every backend, `writable_repo` on those that take
writes, `readonly_repo` on those that refuse them. Each starts with KNOWN written
(for S3: written locally, then pushed with `ketch mirror push`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.errors import KetchError, ObjectNotFound, RefConflict, RefNotFound
from ketch.git import objects as gobj
from ketch.git.refs import BadRefName
from tests.conftest import RunKetch
from tests.contract_fixtures import (  # noqa: F401 - fixtures the backends ask for by name
    ALL,
    BRANCH,
    KNOWN,
    READ_ONLY,
    TAG,
    WRITABLE,
    Backend,
    commit_bytes,
    contract_bucket,
    contract_local_prepared,
    contract_machine,
    contract_mirror,
    contract_ssh_prepared,
    contract_template,
    expect_gap,
    op_abort_writer,
    op_advance_branch,
    op_close,
    op_close_writer,
    op_exists,
    op_expand_hex,
    op_has_many,
    op_iter_refs,
    op_prefetch,
    op_read,
    op_read_many,
    op_read_ref,
    op_read_typed,
    op_resolve_ref,
    op_update_ref,
    op_write,
    op_write_many,
    op_writer,
    op_writer_exists,
    open_backend,
)
from tests.offsite.conftest import s3_env, s3_server  # noqa: F401 - the S3 backend's server
from tests.remote.conftest import sshd  # noqa: F401 - the ssh backend's server


@pytest.fixture(params=ALL)
def contract_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from open_backend(request, tmp_path)


@pytest.fixture(params=WRITABLE)
def writable_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from open_backend(request, tmp_path)


@pytest.fixture(params=READ_ONLY)
def readonly_repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from open_backend(request, tmp_path)


BAD_REF_NAMES = [b"refs/heads/a..b", b"refs/heads/", b"heads/x", b"refs/heads/sp ace"]


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    """The error's message, checked to be what a user should see: one line, no repr."""
    text = str(e.value)
    assert text and "\n" not in text and not re.search(r"(^|[\s(\[=])b['\"]", text), text
    return text


# -- reading: every backend ----------------------------------------------------------------


def test_read_gives_back_every_object_byte_identical_with_its_type(
        contract_repo: Backend) -> None:
    for oid, (t, data) in KNOWN.objects().items():
        got_t, got = op_read(contract_repo.repo, oid)
        assert (got_t, bytes(got)) == (t, data), oid.hex()
        assert gobj.object_id(got_t, got) == oid


def test_read_many_gives_back_each_object_once_in_any_order(contract_repo: Backend) -> None:
    known = KNOWN.objects()
    got = op_read_many(contract_repo.repo, list(known))
    assert len(got) == len(known)
    assert {oid: (t, data) for oid, t, data in got} == {o: (t, bytes(d)) for o, (t, d)
                                                         in known.items()}
    assert op_read_many(contract_repo.repo, []) == []
    # A missing object raises as read does; the rest can still be read one by one.
    with pytest.raises(ObjectNotFound) as e:
        op_read_many(contract_repo.repo, [KNOWN.blob, KNOWN.missing, KNOWN.tree])
    assert KNOWN.missing.hex() in one_line(e)
    assert op_read(contract_repo.repo, KNOWN.tree)[1] == KNOWN.tree_data


def test_read_typed_checks_the_type(contract_repo: Backend) -> None:
    repo = contract_repo.repo
    assert op_read_typed(repo, KNOWN.tree, gobj.TREE) == KNOWN.tree_data
    assert op_read_typed(repo, KNOWN.commit, gobj.COMMIT) == KNOWN.commit_data
    with pytest.raises(KetchError) as e:
        op_read_typed(repo, KNOWN.blob, gobj.TREE)
    assert one_line(e) == f"object {KNOWN.blob.hex()} is a blob, not a tree"


def test_read_of_a_missing_object_raises_object_not_found(contract_repo: Backend) -> None:
    with pytest.raises(ObjectNotFound) as e:
        op_read(contract_repo.repo, KNOWN.missing)
    assert KNOWN.missing.hex() in one_line(e)
    with pytest.raises(ObjectNotFound):
        op_read_typed(contract_repo.repo, KNOWN.missing, gobj.BLOB)
    # The repository is still usable after the miss.
    assert op_read(contract_repo.repo, KNOWN.blob)[1] == KNOWN.blob_data


def test_has_many_agrees_with_exists_in_order(contract_repo: Backend) -> None:
    repo = contract_repo.repo
    oids = [KNOWN.missing, *KNOWN.objects(), gobj.object_id(gobj.TREE, b"")]
    expect = [False] + [True] * len(KNOWN.objects()) + [False]
    assert op_has_many(repo, oids) == expect
    assert [op_exists(repo, o) for o in oids] == expect
    assert op_has_many(repo, []) == []


def test_expand_hex(contract_repo: Backend) -> None:
    repo = contract_repo.repo
    assert op_expand_hex(repo, KNOWN.commit.hex()) == KNOWN.commit
    assert op_expand_hex(repo, KNOWN.commit.hex()[:12]) == KNOWN.commit
    assert op_expand_hex(repo, KNOWN.big.hex()[:7]) == KNOWN.big  # odd length too
    assert op_expand_hex(repo, KNOWN.missing.hex()) is None
    assert op_expand_hex(repo, KNOWN.missing.hex()[:12]) is None


def test_read_ref_and_resolve_ref(contract_repo: Backend) -> None:
    repo = contract_repo.repo
    assert op_read_ref(repo, BRANCH) == KNOWN.commit
    assert op_read_ref(repo, TAG) == KNOWN.tree
    assert op_read_ref(repo, b"refs/heads/nonesuch") is None
    assert op_resolve_ref(repo, BRANCH) == KNOWN.commit
    assert op_resolve_ref(repo, b"contract") == KNOWN.commit  # a branch by name
    assert op_resolve_ref(repo, b"v1") == KNOWN.tree  # a tag by name
    assert op_resolve_ref(repo, b"heads/contract") == KNOWN.commit
    assert op_resolve_ref(repo, KNOWN.blob.hex().encode()) == KNOWN.blob
    assert op_resolve_ref(repo, KNOWN.blob.hex()[:8].upper().encode()) == KNOWN.blob


def test_resolve_ref_of_nothing_raises_ref_not_found(contract_repo: Backend) -> None:
    """An unknown name, a hex id too short to mean anything (3 digits), a
    40-character non-hex: RefNotFound naming what was asked for."""
    for spec in [b"nonesuch", b"abc", b"zz" * 20]:
        with pytest.raises(RefNotFound) as e:
            op_resolve_ref(contract_repo.repo, spec)
        assert one_line(e) == f"unknown ref or object: {spec.decode()}"


def test_resolve_ref_of_a_bad_name_is_one_clear_error(contract_repo: Backend) -> None:
    for spec in [b"", b"a..b"]:
        with pytest.raises((RefNotFound, BadRefName)) as e:
            op_resolve_ref(contract_repo.repo, spec)
        one_line(e)


def test_resolve_ref_of_a_missing_full_id_raises_ref_not_found(contract_repo: Backend) -> None:
    with pytest.raises(RefNotFound):
        op_resolve_ref(contract_repo.repo, KNOWN.missing.hex().encode())


def test_iter_refs_by_prefix(contract_repo: Backend) -> None:
    repo = contract_repo.repo
    everything = [(BRANCH, KNOWN.commit), (TAG, KNOWN.tree)]
    assert op_iter_refs(repo) == everything  # sorted by name
    assert op_iter_refs(repo, b"refs/") == everything
    assert op_iter_refs(repo, b"refs/heads/") == [(BRANCH, KNOWN.commit)]
    assert op_iter_refs(repo, b"refs/tags/") == [(TAG, KNOWN.tree)]
    assert op_iter_refs(repo, b"refs/heads/con") == [(BRANCH, KNOWN.commit)]
    assert op_iter_refs(repo, b"refs/remotes/") == []


def test_prefetch_is_a_hint(contract_repo: Backend) -> None:
    """Hinted objects read back the same, in any order; hinting an object that is not
    there, or hinting and never reading, changes nothing a reader sees."""
    repo = contract_repo.repo
    objects = KNOWN.objects()
    op_prefetch(repo, [*objects, KNOWN.missing])
    for oid in reversed(list(objects)):
        assert op_read(repo, oid) == objects[oid]
    with pytest.raises(ObjectNotFound):
        op_read(repo, KNOWN.missing)
    op_prefetch(repo, list(objects))  # never read
    assert op_read_ref(repo, BRANCH) == KNOWN.commit
    op_prefetch(repo, [])


def test_close_and_context_manager(contract_repo: Backend) -> None:
    with contract_repo.open() as repo:
        assert op_read(repo, KNOWN.blob)[1] == KNOWN.blob_data
    again = contract_repo.open()
    assert op_read_ref(again, BRANCH) == KNOWN.commit
    op_close(again)
    op_close(again)  # a second close is harmless


def test_read_ref_of_a_bad_name_raises_bad_ref_name(contract_repo: Backend,
                                                    request: pytest.FixtureRequest) -> None:
    """A name git refuses: BadRefName, which the VFS reads as "no such branch" (so
    `ketch ls 'a..b'` says the path does not exist, on every backend)."""
    expect_gap(request, contract_repo, "read_ref_bad_name")
    for name in BAD_REF_NAMES:
        with pytest.raises(BadRefName) as e:
            op_read_ref(contract_repo.repo, name)
        assert one_line(e).startswith(f"invalid ref name '{name.decode()}': ")
    assert op_read_ref(contract_repo.repo, BRANCH) == KNOWN.commit


def test_ls_of_a_bad_branch_name_says_it_does_not_exist(contract_repo: Backend,
                                                        run_ketch: RunKetch) -> None:
    """What a user meets when read_ref refuses a name: the same line everywhere."""
    proc = run_ketch("ls", *contract_repo.cli, "a..b", env=contract_repo.env)
    assert proc.returncode == 2
    assert proc.stderr.decode() == "ketch: error: cannot access 'a..b': '/a..b' does not exist\n"


# -- writing: the writable backends -----------------------------------------------------------


def test_written_objects_read_back_byte_identical(writable_repo: Backend) -> None:
    repo = writable_repo.repo
    datas = [b"", b"x", b"contract write\n" * 1000, bytes(range(256)) * 300]
    w = op_writer(repo)
    first = op_write(w, gobj.BLOB, datas[0])
    rest = op_write_many(w, gobj.BLOB, datas[1:])
    tree_data = gobj.encode_tree([gobj.TreeEntry(gobj.MODE_FILE, b"f", rest[0])])
    tree = op_write(w, gobj.TREE, tree_data)
    assert op_writer_exists(w, rest[1])  # the session sees what it wrote
    assert op_writer_exists(w, KNOWN.blob)  # and what the repository has
    assert not op_writer_exists(w, KNOWN.missing)
    packs = op_close_writer(w)
    # The packs the session made (a local writer names idx paths, a remote one
    # the server's idx names: the file name is what they share).
    assert packs and all(re.fullmatch(r"pack-[0-9a-f]{40}\.idx", os.path.basename(p))
                         for p in packs), packs
    oids = [first, *rest]
    assert oids == [gobj.object_id(gobj.BLOB, d) for d in datas]
    assert op_has_many(repo, [*oids, tree]) == [True] * 5
    for oid, data in zip(oids, datas, strict=True):
        assert op_read(repo, oid) == (gobj.BLOB, data)
    assert op_read(repo, tree) == (gobj.TREE, tree_data)
    # Durable: another handle (a new connection) sees them too.
    with writable_repo.open() as other:
        assert op_read(other, rest[-1]) == (gobj.BLOB, datas[-1])
        assert op_has_many(other, [*oids, tree]) == [True] * 5


def test_writing_what_is_there_gives_the_same_id(writable_repo: Backend) -> None:
    repo = writable_repo.repo
    w = op_writer(repo)
    assert op_write_many(w, gobj.BLOB, list(KNOWN.many_data)) == KNOWN.many
    assert op_close_writer(w) == []  # nothing new: no pack
    w = op_writer(repo)
    assert op_write(w, gobj.BLOB, KNOWN.blob_data) == KNOWN.blob
    again = op_write_many(w, gobj.BLOB, [b"twice\n", b"twice\n"])
    assert again[0] == again[1] == gobj.object_id(gobj.BLOB, b"twice\n")
    op_close_writer(w)
    assert op_read(repo, again[0]) == (gobj.BLOB, b"twice\n")


def test_abort_moves_no_ref_and_leaves_the_repository_usable(writable_repo: Backend) -> None:
    """Whether an aborted session's objects stay is the backend's choice (a server
    keeps what arrived whole, so a retry sends less); no ref moves either way."""
    repo = writable_repo.repo
    w = op_writer(repo)
    op_write(w, gobj.BLOB, b"aborted\n")
    op_abort_writer(w)
    assert op_iter_refs(repo) == [(BRANCH, KNOWN.commit), (TAG, KNOWN.tree)]
    w = op_writer(repo)
    oid = op_write(w, gobj.BLOB, b"after the abort\n")
    op_close_writer(w)
    assert op_read(repo, oid) == (gobj.BLOB, b"after the abort\n")
    with writable_repo.open() as other:
        assert op_read(other, oid) == (gobj.BLOB, b"after the abort\n")


def test_update_ref_is_compare_and_swap(writable_repo: Backend) -> None:
    repo = writable_repo.repo
    name = b"refs/heads/cas"
    op_update_ref(repo, name, KNOWN.commit, None)  # create
    assert op_read_ref(repo, name) == KNOWN.commit
    with pytest.raises(RefConflict) as e:
        op_update_ref(repo, name, KNOWN.tree, None)  # "must not exist", but it does
    one_line(e)
    with pytest.raises(RefConflict) as e:
        op_update_ref(repo, name, KNOWN.tree, KNOWN.blob)  # a wrong old value
    one_line(e)
    with pytest.raises(RefConflict):
        op_update_ref(repo, b"refs/heads/absent", KNOWN.tree, KNOWN.commit)
    assert op_read_ref(repo, name) == KNOWN.commit  # nothing moved
    assert op_read_ref(repo, b"refs/heads/absent") is None
    op_update_ref(repo, name, KNOWN.tree, KNOWN.commit)  # the right old value
    assert op_read_ref(repo, name) == KNOWN.tree
    with writable_repo.open() as other:
        assert op_read_ref(other, name) == KNOWN.tree
        assert (name, KNOWN.tree) in op_iter_refs(other, b"refs/heads/")


def test_update_ref_with_a_bad_name_raises_bad_ref_name(writable_repo: Backend) -> None:
    for name in BAD_REF_NAMES:
        with pytest.raises(BadRefName) as e:
            op_update_ref(writable_repo.repo, name, KNOWN.commit, None)
        assert one_line(e).startswith(f"invalid ref name '{name.decode()}': ")
    assert op_iter_refs(writable_repo.repo) == [(BRANCH, KNOWN.commit), (TAG, KNOWN.tree)]


def test_advance_branch_rebuilds_on_a_branch_that_moved(writable_repo: Backend) -> None:
    """Two saves into one branch at once: the later one is rebuilt on top of the
    other's commit, so neither is lost."""
    repo = writable_repo.repo
    w = op_writer(repo)
    theirs = op_write(w, gobj.COMMIT, commit_bytes(KNOWN.tree, [KNOWN.commit], b"theirs\n"))
    ours = op_write(w, gobj.COMMIT, commit_bytes(KNOWN.tree, [KNOWN.commit], b"ours\n"))
    op_close_writer(w)
    op_update_ref(repo, BRANCH, theirs, KNOWN.commit)  # the other save got there first
    parents: list[bytes | None] = []

    def rebuild(parent: bytes | None) -> bytes:
        parents.append(parent)
        return commit_bytes(KNOWN.tree, [parent] if parent else [], b"ours\n")

    rebuilt = gobj.object_id(gobj.COMMIT, commit_bytes(KNOWN.tree, [theirs], b"ours\n"))
    head = op_advance_branch(repo, BRANCH, ours, KNOWN.commit, rebuild)
    assert parents == [theirs]
    assert head == rebuilt
    assert op_read_ref(repo, BRANCH) == head
    assert gobj.decode_commit(op_read_typed(repo, head, gobj.COMMIT)).parents == [theirs]
    # Unopposed, the commit goes in as it is.
    w = op_writer(repo)
    nxt = op_write(w, gobj.COMMIT, commit_bytes(KNOWN.tree, [head], b"next\n"))
    op_close_writer(w)
    assert op_advance_branch(repo, BRANCH, nxt, head, rebuild) == nxt
    assert op_read_ref(repo, BRANCH) == nxt and len(parents) == 1


# -- refusing writes: the read-only backends ---------------------------------------------------


def _refused(e: pytest.ExceptionInfo[BaseException]) -> None:
    assert isinstance(e.value, KetchError) and e.value.exit_code == 2
    assert "read-only" in one_line(e)


def test_writes_are_refused_with_one_line(readonly_repo: Backend) -> None:
    repo = readonly_repo.repo
    with pytest.raises(KetchError) as e:
        op_writer(repo)
    _refused(e)
    with pytest.raises(KetchError) as e:
        op_update_ref(repo, BRANCH, KNOWN.tree, KNOWN.commit)
    _refused(e)
    with pytest.raises(KetchError) as e:
        op_advance_branch(repo, BRANCH, KNOWN.tree, KNOWN.commit, lambda p: b"")
    _refused(e)
    assert op_read_ref(repo, BRANCH) == KNOWN.commit


def test_saving_into_a_read_only_repository_is_refused(readonly_repo: Backend,
                                                       run_ketch: RunKetch,
                                                       tmp_path: Path) -> None:
    """What a user meets: `ketch save -r` into it fails with one line, exit 2."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_bytes(b"data\n")
    proc = run_ketch("save", *readonly_repo.cli, "-n", "x", tmp_path / "data",
                     env=readonly_repo.env)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.startswith("ketch: error: ") and err.count("\n") == 1 and "read-only" in err, err
    with readonly_repo.open() as again:
        assert op_iter_refs(again) == [(BRANCH, KNOWN.commit), (TAG, KNOWN.tree)]
