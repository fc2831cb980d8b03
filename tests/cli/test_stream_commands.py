"""`ketch split/join/cat-file/ls/init` end to end, with git and bup as oracles."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import RunBup, RunKetch, _subprocess_env
from tests.gitutil import git


def fsck(repo: Path) -> None:
    git(repo, "fsck", "--strict", "--no-dangling")


def mixed_bytes(n: int, seed: int) -> bytes:
    r = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        k = r.randint(1, 200_000)
        kind = r.random()
        if kind < 0.5:
            out += r.randbytes(k)
        elif kind < 0.7:
            out += bytes(k)
        elif out:
            start = r.randrange(len(out))
            out += out[start : start + k]
    return bytes(out[:n])


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("data") / "sample.bin"
    p.write_bytes(mixed_bytes(3_000_000, 7))
    return p


def test_split_t_and_b_match_bup(repo_dir: Path, tmp_path: Path, sample: Path,
                                 run_ketch: RunKetch, bup: RunBup) -> None:
    bup_repo = tmp_path / "bup"
    bup(bup_repo, "init")
    for flag in ("-t", "-b"):
        ours = run_ketch("split", "-d", repo_dir, flag, sample, check=True).stdout
        theirs = bup(bup_repo, "split", flag, sample).stdout
        assert ours == theirs
    fsck(repo_dir)


def test_split_n_then_both_tools_join(repo_dir: Path, tmp_path: Path, sample: Path,
                                      run_ketch: RunKetch, bup: RunBup) -> None:
    run_ketch("split", "-d", repo_dir, "-n", "s1", sample, check=True)
    fsck(repo_dir)
    assert run_ketch("join", "-d", repo_dir, "s1", check=True).stdout == sample.read_bytes()
    assert bup(repo_dir, "join", "s1").stdout == sample.read_bytes()
    assert bup(repo_dir, "cat-file", "s1/latest/data").stdout == sample.read_bytes()
    # Same tree as bup's own split of the same bytes.
    bup_repo = tmp_path / "bup"
    bup(bup_repo, "init")
    bup(bup_repo, "split", "-n", "s1", sample)
    assert git(repo_dir, "rev-parse", "s1^{tree}") == git(bup_repo, "rev-parse", "s1^{tree}")
    # ketch reads what bup wrote.
    got = run_ketch("join", "-d", bup_repo, "s1", check=True).stdout
    assert got == sample.read_bytes()


def test_second_split_appends_a_commit_and_writes_no_new_chunks(
        repo_dir: Path, sample: Path, run_ketch: RunKetch) -> None:
    run_ketch("split", "-d", repo_dir, "-n", "s", sample, check=True)
    size1 = sum(p.stat().st_size for p in (repo_dir / "objects" / "pack").glob("*.pack"))
    first = git(repo_dir, "rev-parse", "s").strip()
    run_ketch("split", "-d", repo_dir, "-n", "s", sample, check=True)
    size2 = sum(p.stat().st_size for p in (repo_dir / "objects" / "pack").glob("*.pack"))
    assert git(repo_dir, "rev-parse", "s^").strip() == first
    assert size2 - size1 < 1000  # one commit and nothing else
    fsck(repo_dir)


def test_stdin_stream_and_commit_output(repo_dir: Path, sample: Path, run_ketch: RunKetch) -> None:
    data = sample.read_bytes()
    r = run_ketch("split", "-d", repo_dir, "-n", "dump", "-c", input=data, check=True)
    commit = r.stdout.strip().decode()
    assert len(commit) == 40
    assert git(repo_dir, "rev-parse", "dump").strip().decode() == commit
    assert git(repo_dir, "log", "-1", "--format=%B", commit).startswith(b"ketch split")
    assert run_ketch("join", "-d", repo_dir, commit, check=True).stdout == data


def test_cat_file_forms(repo_dir: Path, sample: Path, run_ketch: RunKetch) -> None:
    run_ketch("split", "-d", repo_dir, "-n", "c", sample, check=True)
    assert run_ketch("cat-file", "-d", repo_dir, "c:data", check=True).stdout == sample.read_bytes()
    tree = run_ketch("cat-file", "-d", repo_dir, "c:", check=True).stdout
    assert b"data.bup" in tree
    blob = git(repo_dir, "hash-object", "-t", "blob", "--stdin")  # id only, nothing written
    assert run_ketch("cat-file", "-d", repo_dir, blob.strip().decode()).returncode == 2


def test_ls_lists_branches(repo_dir: Path, sample: Path, run_ketch: RunKetch) -> None:
    for name in ("b", "a"):
        run_ketch("split", "-d", repo_dir, "-n", name, sample, check=True)
    assert run_ketch("ls", "-d", repo_dir, check=True).stdout.split() == [b"a", b"b"]
    rows = json.loads(run_ketch("ls", "-d", repo_dir, "--json", check=True).stdout)
    assert [r["name"] for r in rows] == ["a", "b"]
    assert all(len(r["commit"]) == 40 for r in rows)


def test_repository_repacked_by_git_gc_still_reads(repo_dir: Path, sample: Path,
                                                    run_ketch: RunKetch) -> None:
    data = sample.read_bytes()
    run_ketch("split", "-d", repo_dir, "-n", "g", sample, check=True)
    edited = data[:1000] + b"EDIT" * 100 + data[1000:]
    run_ketch("split", "-d", repo_dir, "-n", "g2", input=edited, check=True)
    git(repo_dir, "gc", "--aggressive", "--quiet")
    assert run_ketch("join", "-d", repo_dir, "g", check=True).stdout == data
    assert run_ketch("join", "-d", repo_dir, "g2", check=True).stdout == edited
    # and ketch keeps writing into it
    run_ketch("split", "-d", repo_dir, "-n", "g", input=b"more\n", check=True)
    fsck(repo_dir)


@pytest.mark.parametrize("args,needle", [
    (["join", "nosuchbranch"], b"unknown ref"),
    (["split", "-n", "x", "/nonexistent/file"], b"No such file"),
    (["split", "-n", "bad..name", "-"], b"name"),
    (["split", "/dev/null"], b"-b, -t, -c, -n"),
    (["cat-file", "0" * 40], b"unknown ref or object"),
])
def test_bad_input_is_one_line_and_exit_2(repo_dir: Path, run_ketch: RunKetch,
                                          args: list[str], needle: bytes) -> None:
    r = run_ketch(args[0], "-d", repo_dir, *args[1:], input=b"")
    assert r.returncode == 2
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert b"Traceback" not in r.stderr


def test_not_a_repository(tmp_path: Path, run_ketch: RunKetch) -> None:
    r = run_ketch("ls", "-d", tmp_path / "nothing")
    assert r.returncode == 2 and b"not a repository" in r.stderr


def test_corrupt_object_is_reported(repo_dir: Path, run_ketch: RunKetch) -> None:
    run_ketch("split", "-d", repo_dir, "-n", "c", input=b"hello world\n" * 1000, check=True)
    for pack in (repo_dir / "objects" / "pack").glob("*.pack"):
        raw = bytearray(pack.read_bytes())
        for i in range(100, len(raw) - 40, 7):
            raw[i] ^= 0xFF
        os.chmod(pack, 0o644)
        pack.write_bytes(bytes(raw))
    r = run_ketch("join", "-d", repo_dir, "c")
    assert r.returncode == 2 and b"Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_init_is_git_and_bup_compatible(tmp_path: Path, run_ketch: RunKetch, bup: RunBup) -> None:
    repo = tmp_path / "new"
    run_ketch("init", "-d", repo, check=True)
    assert git(repo, "rev-parse", "--is-bare-repository").strip() == b"true"
    bup(repo, "split", "-n", "x", input=b"bup writes here\n")
    assert run_ketch("join", "-d", repo, "x", check=True).stdout == b"bup writes here\n"
    r = run_ketch("ls", env={"KETCH_DIR": str(repo)}, check=True)
    assert r.stdout.split() == [b"x"]


def test_sigkill_during_split_leaves_usable_repository(repo_dir: Path, run_ketch: RunKetch) -> None:
    env = _subprocess_env(None)
    p = subprocess.Popen([sys.executable, "-m", "ketch", "split", "-d", str(repo_dir),
                          "-n", "big", "-"], stdin=subprocess.PIPE, env=env,
                         stderr=subprocess.DEVNULL)
    assert p.stdin is not None
    r = random.Random(3)
    for _ in range(40):
        p.stdin.write(r.randbytes(1 << 20))
    p.stdin.flush()
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    fsck(repo_dir)
    assert not list((repo_dir / "objects" / "pack").glob("*.pack"))
    assert git(repo_dir, "for-each-ref") == b""
    data = mixed_bytes(500_000, 11)
    run_ketch("split", "-d", repo_dir, "-n", "big", input=data, check=True)
    assert run_ketch("join", "-d", repo_dir, "big", check=True).stdout == data
    fsck(repo_dir)
