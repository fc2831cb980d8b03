"""bup's tree format in one module (issue 10 item 6): names survive the trip
through a tree, and a repository answers `has_many` in plain bools."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ketch.buptree import demangle, lookup, mangle
from ketch.git import objects as gobj
from ketch.localrepo import LocalRepository, init_repository

names = st.binary(min_size=1, max_size=20).filter(lambda n: b"/" not in n and b"\0" not in n)
suffixed = st.builds(lambda n, s: n + s, names,
                     st.sampled_from([b".bup", b".bupl", b".bupm", b".bup.bup", b".bupx"]))


@given(st.one_of(names, suffixed), st.booleans())
def test_a_mangled_name_demangles_to_itself(name: bytes, chunked: bool) -> None:
    mode = gobj.MODE_TREE if chunked else gobj.MODE_FILE
    assert demangle(mangle(name, chunked), mode) == (name, chunked)


@given(st.one_of(names, suffixed), st.booleans())
def test_lookup_finds_a_name_under_its_mangled_form(name: bytes, chunked: bool) -> None:
    mode = gobj.MODE_TREE if chunked else gobj.MODE_FILE
    entry = gobj.TreeEntry(mode, mangle(name, chunked), b"\1" * 20)
    assert lookup([entry], name) == (entry, chunked)


def test_has_many_answers_plain_bools_in_order(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "r"))
    with LocalRepository(str(tmp_path / "r")) as repo:
        w = repo.writable().writer()
        there = w.write(gobj.BLOB, b"here\n")
        w.close()
        got = repo.has_many([b"\0" * 20, there, there])
        assert got == [False, True, True]
        assert all(type(x) is bool for x in got)
        assert repo.has_many([]) == []
