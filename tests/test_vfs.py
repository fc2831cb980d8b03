"""The VFS against repositories written by bup 0.33 itself (the oracle)."""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.localrepo import LocalRepository
from ketch.vfs import VFS, NotADirectory, PathNotFound, save_names
from tests.buputil import bup_exe, run_bup

T0 = 1700000000
BIG_SIZE = 300_000
MANY = 3000


@dataclass
class Sample:
    repo: Path
    src: Path
    files: dict[bytes, bytes]  # path relative to src -> content, regular files only

    @property
    def inside(self) -> bytes:
        """The VFS path of src inside the latest save of branch t (bup keeps full paths)."""
        return b"t/latest" + os.fsencode(self.src)


def build_sample(root: Path) -> Sample:
    """Branch t: three saves (two at the same second, so -N names) of a tree with
    mangled, non-UTF-8, chunked, special and many-entry names; branch sp: a
    `bup split -n` commit (no .bupm); tag mytag on t."""
    src = root / "src"
    rng = random.Random(1234)
    files: dict[bytes, bytes] = {
        b"a.txt": b"hello\n",
        b"big.bin": rng.randbytes(BIG_SIZE),
        b"caf\xe9": b"latin-1 name\n",
        b"x.bup": b"x", b"y.bupm": b"y", b"z.bupx": b"z",
        b"dir.bup/f": b"in a dir named dir.bup\n",
        b"empty": b"",
        b"-x": b"sorts before .bupm\n",
        b".hidden": b"dot file\n",
        b"sub/f": b"#!/bin/sh\n",
        b"sub/deeper/d.txt": b"deep\n",
    }
    files.update({b"many/f%04d" % i: b"%d\n" % i for i in range(MANY)})
    for rel, data in files.items():
        p = os.path.join(os.fsencode(src), rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    os.chmod(src / "sub" / "f", 0o755)
    (src / "emptydir").mkdir()
    os.symlink("a.txt", src / "link")
    os.symlink("/nonexistent", src / "dangling")
    os.symlink("sub", src / "sublink")
    os.mkfifo(src / "fifo")
    repo = root / "repo"
    run_bup(repo, "init")
    run_bup(repo, "index", str(src))
    for when in (T0, T0, T0 + 300):
        run_bup(repo, "save", "-n", "t", "--date", str(when), str(src))
    proc = subprocess.run([bup_exe(), "-d", str(repo), "split", "-n", "sp"],
                          input=b"split data\n", capture_output=True, check=True)
    assert proc.returncode == 0
    run_bup(repo, "tag", "mytag", "t")
    return Sample(repo, src, files)


_SHARED: dict[str, Sample] = {}


def shared_sample(factory: pytest.TempPathFactory) -> Sample:
    """One sample per test session, for every module that only reads it."""
    if "sample" not in _SHARED:
        _SHARED["sample"] = build_sample(factory.mktemp("bup-sample"))
    return _SHARED["sample"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, git_env: None) -> Sample:
    return shared_sample(tmp_path_factory)


@pytest.fixture(scope="module")
def vfs(sample: Sample) -> Iterator[VFS]:
    repo = LocalRepository(str(sample.repo))
    yield VFS(repo)
    repo.close()


def _bupm_is_chunked(sample: Sample) -> bool:
    tree = b"t:" + os.fsencode(sample.src).lstrip(b"/") + b"/many"
    out = subprocess.run(["git", "--git-dir", str(sample.repo), "ls-tree", tree],
                         capture_output=True, check=True).stdout
    return any(line.endswith(b"\t.bupm") and b" tree " in line for line in out.splitlines())


def test_root_lists_branches_and_hidden_tags(vfs: VFS) -> None:
    root = vfs.resolve(b"/")
    assert root.kind == "root"
    assert [(i.name, i.kind) for i in vfs.contents(root)] == [
        (b".tag", "tags"), (b"sp", "branch"), (b"t", "branch")]
    tag = vfs.resolve(b"/.tag/mytag")
    assert tag.kind == "save" and tag.commit == vfs.resolve(b"t").oid


def test_save_names_follow_bup(vfs: VFS, sample: Sample) -> None:
    names = [n for n, _, _ in vfs.saves(b"t")]
    expect = [time.strftime("%Y-%m-%d-%H%M%S", time.localtime(t)).encode()
              for t in (T0 + 300, T0, T0)]
    assert names == [expect[0], expect[1] + b"-1", expect[2] + b"-0"]
    revs = subprocess.run(["git", "--git-dir", str(sample.repo), "rev-list", "t"],
                          capture_output=True, check=True).stdout.split()
    assert [c.hex().encode() for _, c, _ in vfs.saves(b"t")] == revs
    listed = [i.name for i in vfs.contents(vfs.resolve(b"t"))]
    assert listed == sorted(names) + [b"latest"]
    latest = vfs.resolve(b"t/latest", follow=False)
    assert latest.kind == "latest" and latest.target == names[0]
    assert vfs.resolve(b"t/latest").commit == vfs.saves(b"t")[0][1]
    with pytest.raises(PathNotFound):
        vfs.resolve(b"t/not-a-save-name")


def test_duplicate_suffixes_pad_and_count_down() -> None:
    ts = [T0 + 100] + [T0] * 11 + [T0 + 100]
    names = save_names(ts)
    base = time.strftime("%Y-%m-%d-%H%M%S", time.localtime(T0)).encode()
    assert names[1] == base + b"-10" and names[11] == base + b"-00"
    assert names[0] == names[12]  # not adjacent: not renamed (bup's trap)


def test_contents_are_demangled_with_metadata(vfs: VFS, sample: Sample) -> None:
    d = vfs.resolve(sample.inside)
    assert d.kind == "dir" and d.meta is not None
    items = {i.name: i for i in vfs.contents(d)}
    on_disk = sorted(os.listdir(os.fsencode(sample.src)))
    assert [i.name for i in vfs.contents(d)] == on_disk
    for name, item in items.items():
        st_ = os.lstat(os.path.join(os.fsencode(sample.src), name))
        if item.kind == "dir":
            assert item.meta is None
            item = vfs.fill_meta(item)
        assert item.meta is not None, name
        assert item.mode == st_.st_mode, name
        assert item.meta.mtime == st_.st_mtime_ns, name
    assert items[b"big.bin"].chunked and not items[b"a.txt"].chunked
    assert items[b"fifo"].kind == "fifo" and items[b"link"].kind == "symlink"
    assert items[b"link"].target == b"a.txt"
    assert items[b"dir.bup"].kind == "dir"


def test_big_directory_with_chunked_bupm(vfs: VFS, sample: Sample) -> None:
    assert _bupm_is_chunked(sample)
    many = list(vfs.contents(vfs.resolve(sample.inside + b"/many")))
    assert len(many) == MANY
    assert all(i.meta is not None and i.mode == 0o100644 for i in many)
    assert vfs.size(many[-1]) == len(sample.files[b"many/f%04d" % (MANY - 1)])


def test_sizes_and_content_match_the_files(vfs: VFS, sample: Sample) -> None:
    for rel, data in sample.files.items():
        if rel.startswith(b"many/") and not rel.endswith(b"00"):
            continue  # every 100th is plenty
        item = vfs.resolve(sample.inside + b"/" + rel)
        assert vfs.size(item) == len(data), rel
        assert b"".join(d for _, d in vfs.iter_content(item)) == data, rel
        with vfs.open(item) as f:
            assert f.read() == data
    big = vfs.resolve(sample.inside + b"/big.bin")
    no_meta = type(big)(big.name, big.kind, big.oid, big.mode, chunked=True)
    assert vfs.size(no_meta) == BIG_SIZE  # computed from the chunk tree
    assert vfs.size(vfs.resolve(sample.inside + b"/link", follow=False)) == 5
    assert vfs.size(vfs.resolve(sample.inside + b"/fifo")) == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, BIG_SIZE + 10), st.integers(0, 70_000)), max_size=6))
def test_open_seek_read(vfs: VFS, sample: Sample, ops: list[tuple[int, int]]) -> None:
    data = sample.files[b"big.bin"]
    with vfs.open(vfs.resolve(sample.inside + b"/big.bin")) as f:
        for offset, n in ops:
            assert f.seek(offset) == offset
            assert f.read(n) == data[offset:offset + n]
            assert f.tell() == min(offset + n, max(offset, len(data)))
        assert f.seek(-10, os.SEEK_END) == len(data) - 10
        buf = bytearray(20)
        assert f.readinto(buf) == 10 and bytes(buf[:10]) == data[-10:]


def test_iter_content_from_offset_skips_chunks(vfs: VFS, sample: Sample) -> None:
    data = sample.files[b"big.bin"]
    big = vfs.resolve(sample.inside + b"/big.bin")
    whole = list(vfs.iter_content(big))
    assert len(whole) > 3
    tail = list(vfs.iter_content(big, 250_000))
    assert b"".join(d for _, d in tail) == data[250_000:]
    assert len(tail) < len(whole)


def test_path_resolution(vfs: VFS, sample: Sample) -> None:
    inside = sample.inside
    assert vfs.resolve(b"/" + inside + b"/a.txt") == vfs.resolve(inside + b"/a.txt")
    assert vfs.resolve(inside + b"/sub/../a.txt").name == b"a.txt"
    assert vfs.resolve(b"t/latest/..").kind == "branch"
    assert vfs.resolve(b"/../../t").kind == "branch"
    assert vfs.resolve(inside + b"/sublink/f").name == b"f"
    assert vfs.resolve(inside + b"/sublink/../a.txt").name == b"a.txt"
    assert vfs.resolve(inside + b"/sublink").kind == "dir"
    assert vfs.resolve(inside + b"/sublink", follow=False).kind == "symlink"
    assert vfs.resolve(inside + b"/link").kind == "file"
    assert vfs.resolve(inside + b"/caf\xe9").kind == "file"
    assert vfs.resolve(inside + b"/x.bup").kind == "file"
    with pytest.raises(PathNotFound):
        vfs.resolve(inside + b"/dangling")
    assert vfs.resolve(inside + b"/dangling", follow=False).target == b"/nonexistent"
    with pytest.raises(NotADirectory):
        vfs.resolve(inside + b"/a.txt/")
    with pytest.raises(NotADirectory):
        vfs.resolve(inside + b"/a.txt/x")
    with pytest.raises(PathNotFound):
        vfs.resolve(inside + b"/nope")
    with pytest.raises(PathNotFound):
        vfs.resolve(b"no-such-branch")
    with pytest.raises(PathNotFound):
        vfs.resolve(b"bad name..lock")


def test_split_branch_without_bupm(vfs: VFS) -> None:
    (data,) = vfs.contents(vfs.resolve(b"sp/latest"))
    assert (data.name, data.kind, data.mode, data.meta) == (b"data", "file", 0o100644, None)
    assert vfs.fill_meta(vfs.resolve(b"sp/latest")).meta is None
    assert b"".join(d for _, d in vfs.iter_content(data)) == b"split data\n"


def test_walk_preorder_with_dir_metadata(vfs: VFS, sample: Sample) -> None:
    rows = list(vfs.walk(vfs.resolve(sample.inside)))
    assert rows[0][0] == b""
    paths = [p for p, _ in rows[1:]]
    expect = []
    src = os.fsencode(sample.src)
    for top, dirs, names in os.walk(src):
        rel = os.path.relpath(top, src)
        for n in dirs + names:
            expect.append(n if rel == b"." else rel + b"/" + n)
    assert sorted(paths) == sorted(expect)
    assert paths.index(b"sub") < paths.index(b"sub/deeper") < paths.index(b"sub/deeper/d.txt")
    assert all(i.meta is not None for _, i in rows)


def test_small_cache_gives_the_same_answers(sample: Sample) -> None:
    with LocalRepository(str(sample.repo)) as repo:
        small = VFS(repo, cache_trees=2)
        rows = [(p, i.mode) for p, i in small.walk(small.resolve(sample.inside + b"/sub"))]
        big = VFS(repo)
        assert rows == [(p, i.mode) for p, i in big.walk(big.resolve(sample.inside + b"/sub"))]


def test_save_names_use_the_readers_timezone(sample: Sample, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    with LocalRepository(str(sample.repo)) as repo:
        try:
            monkeypatch.setenv("TZ", "UTC")
            time.tzset()
            utc = VFS(repo).saves(b"t")[0][0]
            monkeypatch.setenv("TZ", "Asia/Kolkata")
            time.tzset()
            ist = VFS(repo).saves(b"t")[0][0]
        finally:
            monkeypatch.undo()
            time.tzset()
    assert utc == b"2023-11-14-221820" and ist == b"2023-11-15-034820"

