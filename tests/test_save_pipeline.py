"""A save stores big files on a worker thread beside its walk (ketch.savepipe):
what it writes must not depend on that. The pipeline's commit tree is the one the
same save makes with everything on one thread (object for object, .bupm
included), its files have bup's ids, and what went wrong is still said."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ketch.localrepo import LocalRepository, init_repository
from ketch.save import SaveOptions, SaveResult, save
from tests.conftest import SRC_DIR, RunBup, RunKetch
from tests.gitutil import git

MB = 1 << 20


def _make_tree(root: Path) -> None:
    r = random.Random(13)
    text = b"".join(b"line %d of a log that compresses well\n" % i for i in range(120_000))
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "c-only-big").mkdir()
    (root / "empty-dir").mkdir()
    # Big ones (over the 1 MiB small-file limit): one spans two read blocks.
    (root / "a" / "big-random").write_bytes(r.randbytes(8 * MB + 12345))
    (root / "a" / "deep" / "big-text").write_bytes(text)
    (root / "c-only-big" / "only").write_bytes(r.randbytes(2 * MB))
    (root / "b" / "copy-of-text").write_bytes(text)  # same chunks as another file
    with open(root / "b" / "sparse", "wb") as f:
        f.truncate(10 * MB)
        f.seek(5 * MB)
        f.write(r.randbytes(300_000))
    (root / "b" / "linked").write_bytes(r.randbytes(3 * MB))
    os.link(root / "b" / "linked", root / "a" / "link-to-linked")
    os.link(root / "a" / "deep" / "big-text", root / "z-link-to-text")
    # Small ones, between and after the big ones in walk order.
    for d in ("a", "a/deep", "b", ""):
        for i in range(40):
            (root / d / f"s{i:02d}").write_bytes(r.randbytes(r.randint(0, 40_000)))
    os.link(root / "a" / "s01", root / "b" / "hl-small")
    os.symlink("a/big-random", root / "sym")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()
    if os.geteuid() == 0:
        os.mknod(root / "null-dev", 0o600 | 0o020000, os.makedev(1, 3))
    # Directory and symlink atimes ahead of their ctimes: listing or reading them
    # (relatime) moves none, so every save sees the same metadata.
    later = time.time_ns() + 86400 * 10**9
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, ns=(later, 1_600_000_000 * 10**9))
    os.utime(root / "sym", ns=(later, 1_600_000_000 * 10**9), follow_symlinks=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipe") / "src"
    root.mkdir()
    _make_tree(root)
    return root


def _save(repo_dir: Path, paths: list[str], *, pipeline: bool, **kw: Any) -> SaveResult:
    init_repository(str(repo_dir))
    with LocalRepository(str(repo_dir)) as repo:
        opts = SaveOptions(name="t", paths=paths, date=1_700_000_000, pipeline=pipeline, **kw)
        return save(repo.writable(), opts)


def _tree_id(repo_dir: Path, spec: str) -> str:
    return git(repo_dir, "rev-parse", spec).decode().strip()


def test_pipeline_writes_what_one_thread_writes(tree: Path, tmp_path: Path) -> None:
    ref = _save(tmp_path / "ref", [str(tree)], pipeline=False)
    got = _save(tmp_path / "pipe", [str(tree)], pipeline=True)
    assert ref.warnings == [] and got.warnings == []
    # The source's own tree (the directories above it change as the test runs).
    src = f"t:{str(tree).lstrip('/')}"
    assert _tree_id(tmp_path / "pipe", src) == _tree_id(tmp_path / "ref", src)
    assert (got.files, got.dirs, got.files_read, got.bytes_read) == (
        ref.files, ref.dirs, ref.files_read, ref.bytes_read)
    git(tmp_path / "pipe", "fsck", "--strict", "--no-dangling")
    # A graft and --strip take the other way through the archive's top.
    opts = {"grafts": [(str(tree / "a"), "/x"), (str(tree / "b"), "/y/z")]}
    paths = [str(tree / "a"), str(tree / "b"), str(tree / "sym")]
    g_ref = _save(tmp_path / "g-ref", paths, pipeline=False, **opts)
    g_got = _save(tmp_path / "g-pipe", paths, pipeline=True, **opts)
    for sub in ("t:x", "t:y/z"):
        assert _tree_id(tmp_path / "g-pipe", sub) == _tree_id(tmp_path / "g-ref", sub)
    s_ref = _save(tmp_path / "s-ref", [str(tree / "b")], pipeline=False, strip=True)
    s_got = _save(tmp_path / "s-pipe", [str(tree / "b")], pipeline=True, strip=True)
    assert s_got.tree == s_ref.tree
    assert g_ref.warnings == g_got.warnings == s_ref.warnings == s_got.warnings == []


def _file_ids(repo_dir: Path, spec: str) -> dict[bytes, bytes]:
    """Every file's (or chunked file's) entry below `spec`, .bupm left out (it
    holds times bup and ketch read at different moments)."""
    out = {}
    for line in git(repo_dir, "ls-tree", "-r", "-t", "-z", spec).split(b"\0"):
        if not line:
            continue
        info, name = line.split(b"\t", 1)
        mode, _, oid = info.split()
        parts = name.split(b"/")
        if b".bupm" in parts or any(p.endswith(b".bup") for p in parts[:-1]):
            continue  # inside a chunked file: its top id says it all
        if mode == b"040000" and not name.endswith(b".bup"):
            continue
        out[name] = oid
    return out


def test_pipeline_files_have_bups_ids(tree: Path, tmp_path: Path, bup: RunBup) -> None:
    _save(tmp_path / "k", [str(tree)], pipeline=True)
    br = tmp_path / "b"
    bup(br, "init")
    bup(br, "index", tree)
    bup(br, "save", "-n", "t", tree)
    rel = str(tree).lstrip("/")
    ours, theirs = _file_ids(tmp_path / "k", f"t:{rel}"), _file_ids(br, f"t:{rel}")
    assert len(theirs) > 170
    assert ours == theirs


def test_unreadable_big_file_is_reported_and_the_rest_saved(tmp_path: Path,
                                                            run_ketch: RunKetch) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "big-secret").write_bytes(os.urandom(3 * MB))
    (src / "d" / "big-ok").write_bytes(os.urandom(3 * MB))
    (src / "small").write_bytes(b"small\n")
    os.chmod(src / "d" / "big-secret", 0)
    repo = tmp_path / "r"
    run_ketch("init", "-d", repo, check=True)
    cmd = [sys.executable, "-m", "ketch", "save", "-d", str(repo), "-n", "s", str(src)]
    if os.geteuid() == 0:
        # root reads anything: drop the capabilities that let it
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    r = subprocess.run(cmd, capture_output=True, env=dict(os.environ, PYTHONPATH=str(SRC_DIR)))
    assert r.returncode == 1, r.stderr
    assert b"big-secret: Permission denied; skipped" in r.stderr
    assert b"Traceback" not in r.stderr
    rel = str(src).lstrip("/")
    names = git(repo, "ls-tree", "--name-only", f"s:{rel}/d").split()
    assert b"big-ok.bup" in names and not any(n.startswith(b"big-secret") for n in names)
