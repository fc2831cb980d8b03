"""`ketch save` against bup 0.33: same layout, same file ids, same metadata,
readable by bup restore; the save rule (exactly the given paths); warnings."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ketch.git import objects as gobj
from ketch.metadata import Metadata, decode_all
from tests.conftest import RunBup, RunKetch
from tests.gitutil import git


def ls_tree(repo: Path, spec: str) -> dict[bytes, tuple[str, str]]:
    out = {}
    for line in git(repo, "ls-tree", "-z", spec).split(b"\0"):
        if not line:
            continue
        info, name = line.split(b"\t", 1)
        mode, kind, oid = info.split()
        out[name] = (mode.decode(), oid.decode())
    return out


def make_tree(root: Path) -> None:
    r = random.Random(4)
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "a.txt").write_bytes(b"hello\n")
    (root / "empty").write_bytes(b"")
    (root / "big.bin").write_bytes(r.randbytes(300_000))
    (root / "foo.a").write_bytes(b"foo.a\n")
    (root / "x.bup").write_bytes(b"named x.bup\n")
    (root / "y.bupm").write_bytes(b"named y.bupm\n")
    (root / "d.bup").mkdir()
    (root / "d.bup" / "inside").write_bytes(b"in a dir named d.bup\n")
    (root / "sub" / "f").write_bytes(b"sub file\n" * 100)
    (root / "sub" / "deeper" / "g").write_bytes(r.randbytes(5000))
    os.symlink("a.txt", root / "link")
    os.symlink("/nonexistent/target", root / "dangling")
    os.link(root / "a.txt", root / "sub" / "hl")
    os.mkfifo(root / "fifo")
    (root / b"caf\xe9 \n name".decode("utf-8", "surrogateescape")).write_bytes(b"odd name\n")
    os.chmod(root / "sub" / "f", 0o4755)
    os.utime(root / "a.txt", ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("save") / "src"
    root.mkdir()
    make_tree(root)
    return root


def test_layout_and_file_ids_match_bup(tree: Path, tmp_path: Path, run_ketch: RunKetch,
                                       bup: RunBup) -> None:
    kr, br = tmp_path / "k", tmp_path / "b"
    run_ketch("init", "-d", kr, check=True)
    run_ketch("save", "-d", kr, "-n", "t", "--date", "1700000000", tree, check=True)
    bup(br, "init")
    bup(br, "index", tree)
    bup(br, "save", "-n", "t", "--date", "1700000000", tree)
    git(kr, "fsck", "--strict", "--no-dangling")
    rel = str(tree).lstrip("/")
    for sub in ("", "/sub", "/sub/deeper", "/d.bup.bupl"):
        ours, theirs = ls_tree(kr, f"t:{rel}{sub}"), ls_tree(br, f"t:{rel}{sub}")
        assert set(ours) == set(theirs), sub
        for name, (mode, oid) in theirs.items():
            if name == b".bupm":
                # Holds times (a directory's atime moves when it is listed), so its
                # bytes, and whether they happen to split, may differ run to run.
                continue
            assert ours[name][0] == mode, name
            if mode != "040000" or name.endswith(b".bup"):
                assert ours[name][1] == oid, name  # file contents: identical ids
    # Every directory on the way from / carries a .bupm.
    parts = rel.split("/")
    for i in range(len(parts) + 1):
        assert b".bupm" in ls_tree(kr, "t:" + "/".join(parts[:i]))


def _bupm(repo: Path, spec: str) -> list[Metadata | None]:
    mode, oid = ls_tree(repo, spec)[b".bupm"]
    if mode != "040000":
        return decode_all(git(repo, "cat-file", "blob", oid))
    # A .bupm with a split point in it (its times differ run to run) is a chunk
    # tree, in both tools; its blobs in tree order are the record stream.
    chunks = [line.split()[2] for line in git(repo, "ls-tree", "-r", oid).split(b"\n") if line]
    return decode_all(b"".join(git(repo, "cat-file", "blob", c) for c in chunks))


def test_bupm_decodes_to_the_same_fields_as_bups(tree: Path, tmp_path: Path,
                                                 run_ketch: RunKetch, bup: RunBup) -> None:
    kr, br = tmp_path / "k", tmp_path / "b"
    run_ketch("init", "-d", kr, check=True)
    bup(br, "init")
    bup(br, "index", tree)
    bup(br, "save", "-n", "t", tree)
    run_ketch("save", "-d", kr, "-n", "t", tree, check=True)
    rel = str(tree).lstrip("/")
    ours, theirs = _bupm(kr, f"t:{rel}"), _bupm(br, f"t:{rel}")
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a is not None and b is not None
        for f in ("mode", "uid", "gid", "user", "group", "rdev", "mtime", "size",
                  "symlink_target", "linux_xattr", "posix1e_acl"):
            assert getattr(a, f) == getattr(b, f), f
        # bup's link target is a group key chosen in its index order; both mark the same set.
        assert (a.hardlink_target is None) == (b.hardlink_target is None)


def test_round_trip_through_bup_restore(tree: Path, tmp_path: Path, run_ketch: RunKetch,
                                        bup: RunBup) -> None:
    kr = tmp_path / "k"
    run_ketch("init", "-d", kr, check=True)
    run_ketch("save", "-d", kr, "-n", "t", tree, check=True)
    out = tmp_path / "out"
    bup(kr, "restore", "-C", out, f"t/latest{tree}")
    got, want = out / tree.name, tree
    for dirpath, dirnames, filenames in os.walk(want):
        rel = Path(dirpath).relative_to(want)
        for name in filenames + dirnames:
            s, d = want / rel / name, got / rel / name
            ss, ds = os.lstat(s), os.lstat(d)
            assert ss.st_mode == ds.st_mode, s
            if os.path.islink(s):
                assert os.readlink(s) == os.readlink(d)
            elif os.path.isfile(s) and not os.path.islink(s):
                assert s.read_bytes() == d.read_bytes()
                assert ss.st_mtime_ns == ds.st_mtime_ns
    assert os.lstat(got / "a.txt").st_ino == os.lstat(got / "sub" / "hl").st_ino


def test_save_contains_exactly_the_given_paths(tmp_path: Path, run_ketch: RunKetch) -> None:
    """The trap of the strategy document cannot happen: what another save or the
    index saw never removes a path from a save."""
    etc, log = tmp_path / "etc", tmp_path / "log"
    for d, n in ((etc, 5), (log, 3)):
        d.mkdir()
        for i in range(n):
            (d / f"f{i}").write_text(f"{d.name} {i}\n")
    repo = tmp_path / "r"
    run_ketch("init", "-d", repo, check=True)
    run_ketch("index", "-d", repo, log, check=True)  # the index knows only log
    run_ketch("save", "-d", repo, "-n", "mybackup", etc, check=True)
    run_ketch("save", "-d", repo, "-n", "mybackup", log, check=True)
    run_ketch("save", "-d", repo, "-n", "mybackup", etc, log, check=True)
    rel = str(tmp_path).lstrip("/")
    latest = ls_tree(repo, f"mybackup:{rel}")
    assert {b"etc", b"log"} <= set(latest)
    assert set(ls_tree(repo, f"mybackup:{rel}/etc")) == {b".bupm"} | {b"f%d" % i for i in range(5)}
    first = ls_tree(repo, f"mybackup~2:{rel}")
    assert b"etc" in first and b"log" not in first
    assert git(repo, "rev-parse", "mybackup~1^").strip() == git(repo, "rev-parse", "mybackup~2").strip()


def test_unchanged_files_are_not_read_again(tmp_path: Path, run_ketch: RunKetch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(random.Random(i).randbytes(20_000))
    os.utime(src / "f0", ns=(1_000_000_000, 1_000_000_000))
    for i in range(20):
        os.utime(src / f"f{i}", ns=(1_000_000_000, 1_000_000_000 + i))
    # A file changed within a second of a save may change again unnoticed (coarse
    # timestamps), so that save never marks it reusable: let that second pass.
    time.sleep(1.1)
    repo = tmp_path / "r"
    run_ketch("init", "-d", repo, check=True)
    first = json.loads(run_ketch("save", "-d", repo, "-n", "s", "--json", "-q", src,
                                 check=True).stdout)
    assert first["files_read"] == 20
    (src / "f3").write_bytes(b"changed\n")
    os.utime(src / "f3", ns=(1_000_000_000, 2_000_000_000))
    second = json.loads(run_ketch("save", "-d", repo, "-n", "s", "--json", "-q", src,
                                  check=True).stdout)
    assert second["files_read"] == 1 and second["files"] == 20
    rel = str(src).lstrip("/")
    assert git(repo, "cat-file", "blob", f"s:{rel}/f3") == b"changed\n"
    got = run_ketch("cat-file", "-d", repo, f"s/latest{src}/f4", check=True).stdout
    assert got == (src / "f4").read_bytes()


def test_unreadable_file_is_reported_and_the_rest_saved(tmp_path: Path,
                                                        run_ketch: RunKetch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("fine\n")
    (src / "secret").write_text("no access\n")
    os.chmod(src / "secret", 0)
    repo = tmp_path / "r"
    run_ketch("init", "-d", repo, check=True)
    cmd = [sys.executable, "-m", "ketch", "save", "-d", str(repo), "-n", "s", str(src)]
    if os.geteuid() == 0:
        # root reads anything: drop the capabilities that let it
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent / "src"))
    r = subprocess.run(cmd, capture_output=True, env=env)
    assert r.returncode == 1, r.stderr
    assert b"secret" in r.stderr and b"Traceback" not in r.stderr
    rel = str(src).lstrip("/")
    names = set(ls_tree(repo, f"s:{rel}"))
    assert b"ok" in names and b"secret" not in names


def test_strip_and_graft(tree: Path, tmp_path: Path, run_ketch: RunKetch, bup: RunBup) -> None:
    repo = tmp_path / "r"
    run_ketch("init", "-d", repo, check=True)
    run_ketch("save", "-d", repo, "-n", "s", "--strip", tree, check=True)
    assert b"a.txt" in ls_tree(repo, "s:")
    run_ketch("save", "-d", repo, "-n", "g", "--graft", f"{tree}=/new/place", tree, check=True)
    assert b"a.txt" in ls_tree(repo, "g:new/place")
    fake = _bupm(repo, "g:new")
    assert fake == [None]  # a directory made up by the graft has an empty record
    run_ketch("save", "-d", repo, "-n", "p", "--strip-path", tree.parent, tree, check=True)
    assert b"a.txt" in ls_tree(repo, f"p:{tree.name}")
    git(repo, "fsck", "--strict", "--no-dangling")
    out = tmp_path / "out"
    bup(repo, "restore", "-C", out, "g/latest/new/place/sub")
    assert (out / "sub" / "f").read_bytes() == (tree / "sub" / "f").read_bytes()


def test_excludes(tmp_path: Path, run_ketch: RunKetch) -> None:
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "keep").mkdir()
    (src / "keep" / "a.tmp").write_text("x")
    (src / "keep" / "b.txt").write_text("y")
    (src / "cache" / "big").write_text("z")
    (src / "marked").mkdir()
    (src / "marked" / ".nobackup").write_text("")
    (src / "marked" / "data").write_text("w")
    repo = tmp_path / "r"
    run_ketch("init", "-d", repo, check=True)
    run_ketch("index", "-d", repo, "--exclude", "*.tmp", "--exclude", str(src / "cache"), src,
              check=True)
    run_ketch("save", "-d", repo, "-n", "s", "--exclude-if-present", ".nobackup", src,
              check=True)
    rel = str(src).lstrip("/")
    assert set(ls_tree(repo, f"s:{rel}")) == {b".bupm", b"keep", b"marked"}
    assert set(ls_tree(repo, f"s:{rel}/keep")) == {b".bupm", b"b.txt"}
    assert set(ls_tree(repo, f"s:{rel}/marked")) == {b".bupm"}


def test_chunked_bupm_for_a_big_directory(tmp_path: Path, run_ketch: RunKetch,
                                          bup: RunBup) -> None:
    src = tmp_path / "many"
    src.mkdir()
    for i in range(3000):
        (src / f"file{i:05d}").write_bytes(b"%d\n" % i)
    repo = tmp_path / "r"
    run_ketch("init", "-d", repo, check=True)
    run_ketch("save", "-d", repo, "-n", "m", src, check=True)
    rel = str(src).lstrip("/")
    assert ls_tree(repo, f"m:{rel}")[b".bupm"][0] == "040000"
    out = bup(repo, "ls", f"m/latest{src}").stdout.split()
    assert len(out) == 3000
    assert gobj.MODE_TREE == 0o40000


def test_short_bupm_that_splits_is_a_chunk_tree(tmp_path: Path) -> None:
    """Even a .bupm shorter than the rollsum window can hold a split point (the
    window starts zero-filled); bup then stores it as a tree, and so must we."""
    from ketch import split as hs
    from ketch.localrepo import LocalRepository, init_repository
    from ketch.progress import NullProgress
    from ketch.save import SaveOptions, SaveResult, _Saver

    r = random.Random(3)
    data = b""
    for _ in range(100_000):
        cand = r.randbytes(r.randint(2, 63))
        if len(list(hs.split_chunks([cand]))) > 1:
            data = cand
            break
    assert data, "no short input with a split point found"
    init_repository(str(tmp_path / "r"))
    repo = LocalRepository(str(tmp_path / "r"))
    w = repo.writer()
    saver = _Saver(repo, w, None, SaveOptions(name="x", paths=[]), NullProgress(), SaveResult())
    mode, oid = saver.store_bytes(data)
    w.close()
    sink: dict[bytes, bytes] = {}

    class Sink:
        def write(self, type_num: int, d: bytes | memoryview) -> bytes:
            o = gobj.object_id(type_num, d)
            sink[o] = bytes(d)
            return o

    assert (mode, oid) == hs.split_to_blob_or_tree(Sink(), [data])[:2]
    assert mode == gobj.MODE_TREE
