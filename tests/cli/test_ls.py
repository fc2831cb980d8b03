"""`ketch ls` and `ketch cat-file NAME/.../PATH` against `bup ls` / `bup cat-file`
on one bup-written repository (shared with tests/test_vfs.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ketch.cli.main import cli
from ketch.errors import KetchError
from tests.conftest import RunKetch
from tests.test_vfs import Sample, run_bup, shared_sample


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, git_env: None) -> Sample:
    return shared_sample(tmp_path_factory)


@pytest.fixture
def tz(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """TZ in the environment of both this process (ketch in-process) and bup."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


def ketch(repo: Path, *args: str | bytes) -> tuple[int, bytes, bytes]:
    """Run the CLI in this process (a subprocess costs ~0.5 s of imports)."""
    argv = [os.fsdecode(a) for a in args]
    r = CliRunner().invoke(cli, [argv[0], "-d", str(repo), *argv[1:]], standalone_mode=False)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    code = r.return_value if isinstance(r.return_value, int) else 0
    return code, r.stdout_bytes, r.stderr_bytes


def ls_paths(sample: Sample) -> list[bytes]:
    inside = sample.inside
    return [
        b"/", b"t", b"t/latest", b"/t/latest/", b".tag", b".tag/mytag", b"sp", b"sp/latest",
        b"t/latest/..", inside, inside + b"/sub", inside + b"/sub/deeper/..",
        inside + b"/sublink", inside + b"/link", inside + b"/dangling", inside + b"/a.txt",
        inside + b"/caf\xe9", inside + b"/x.bup", inside + b"/dir.bup", inside + b"/emptydir",
        inside + b"/fifo", inside + b"/big.bin", inside + b"/many",
    ]


# TZ only changes save names and dates, so the other zone needs only -l and -la.
LS_CASES = [("UTC", f) for f in ([], ["-l"], ["-a"], ["-la"], ["-s"], ["-A"], ["-ls"])] + [
    ("Asia/Kolkata", ["-l"]), ("Asia/Kolkata", ["-la"])]


@pytest.mark.parametrize(("tz", "flags"), LS_CASES, indirect=["tz"])
def test_ls_matches_bup(sample: Sample, tz: str, flags: list[str]) -> None:
    paths = ls_paths(sample)
    expect = run_bup(sample.repo, "ls", *flags, *paths)
    code, got, err = ketch(sample.repo, "ls", *flags, *paths)
    assert (code, err) == (0, b"")
    assert got.decode(errors="replace") == expect.decode(errors="replace")
    assert got == expect


def test_ls_saves_in_the_readers_timezone_subprocess(sample: Sample, run_ketch: RunKetch
                                                     ) -> None:
    env = {"TZ": "Asia/Kolkata"}
    got = run_ketch("ls", "-d", sample.repo, "-l", "t", env=env, check=True).stdout
    expect = run_bup(sample.repo, "ls", "-l", "t", env={**os.environ, **env})
    assert got == expect
    assert b"2023-11-15-034820" in got and b"1970-01-01 05:30 latest" in got


def test_missing_path_fails_with_one_line(sample: Sample, run_ketch: RunKetch) -> None:
    for path in ("t/nope", f"{os.fsdecode(sample.inside)}/a.txt/"):
        r = run_ketch("ls", "-d", sample.repo, path)
        assert r.returncode == 2, path
        assert r.stdout == b""
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(b"ketch: error: ")


def test_ls_continues_after_a_bad_path_like_bup(sample: Sample) -> None:
    code, got, err = ketch(sample.repo, "ls", "t/nope", "t")
    assert code == 2 and err.count(b"\n") == 1
    assert got == run_bup(sample.repo, "ls", "t/nope", "t", check=False)


def test_ls_json(sample: Sample) -> None:
    code, out, _ = ketch(sample.repo, "ls", "--json", "-A", sample.inside)
    rows = json.loads(out)
    names = sorted(os.fsencode(n) for n in os.listdir(os.fsencode(sample.src)))
    assert [os.fsencode(r["name"]) for r in rows] == names
    keys = {"name", "type", "mode", "size", "mtime", "user", "group", "oid", "commit", "target"}
    assert all(set(r) == keys for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert by_name["big.bin"]["size"] == len(sample.files[b"big.bin"])
    assert by_name["big.bin"]["type"] == "file" and by_name["sub"]["type"] == "dir"
    assert by_name["link"]["target"] == "a.txt" and by_name["fifo"]["type"] == "fifo"
    assert by_name["a.txt"]["mtime"] == os.stat(sample.src / "a.txt").st_mtime_ns // 10**9
    (latest,) = [r for r in json.loads(ketch(sample.repo, "ls", "--json", "t")[1])
                 if r["name"] == "latest"]
    assert latest["type"] == "latest" and latest["oid"] is None


def test_cat_file_prints_file_content(sample: Sample) -> None:
    for rel in (b"a.txt", b"big.bin", b"caf\xe9", b"x.bup", b"y.bupm", b"empty", b"sub/f",
                b"many/f2999"):
        code, out, _ = ketch(sample.repo, "cat-file", sample.inside + b"/" + rel)
        assert code == 0 and out == sample.files[rel], rel
    # /NAME/DATE/PATH with a -N name
    name = next(n for n in ketch(sample.repo, "ls", "t")[1].split() if n.endswith(b"-0"))
    path = b"/t/" + name + os.fsencode(sample.src) + b"/a.txt"
    assert ketch(sample.repo, "cat-file", path)[1] == b"hello\n"


def test_cat_file_chunked_file_subprocess(sample: Sample, run_ketch: RunKetch) -> None:
    r = run_ketch("cat-file", "-d", sample.repo, sample.inside + b"/big.bin", check=True)
    assert r.stdout == sample.files[b"big.bin"]


def test_cat_file_meta_and_bupm_match_bup(sample: Sample) -> None:
    for rel in (b"/a.txt", b"/big.bin", b"/sub", b"/link", b"/fifo"):
        path = sample.inside + rel
        assert ketch(sample.repo, "cat-file", "--meta", path)[1] == run_bup(
            sample.repo, "cat-file", "--meta", path), rel
    oldest_save = b"t/" + ketch(sample.repo, "ls", "t")[1].split()[0]
    split_save = b"sp/" + ketch(sample.repo, "ls", "sp")[1].split()[0]
    for path in (sample.inside + b"/many", oldest_save, split_save):
        assert ketch(sample.repo, "cat-file", "--bupm", path)[1] == run_bup(
            sample.repo, "cat-file", "--bupm", path)


def test_cat_file_directory_and_special_fail(sample: Sample, run_ketch: RunKetch) -> None:
    r = run_ketch("cat-file", "-d", sample.repo, sample.inside + b"/sub")
    assert r.returncode == 2 and b"is a directory" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    for rel, message in ((b"/link", "not a regular file"), (b"/fifo", "not a regular file"),
                         (b"/nope", "does not exist"), (b"/sub", "is a directory")):
        with pytest.raises(KetchError, match=message):
            ketch(sample.repo, "cat-file", sample.inside + rel)


def test_cat_file_git_forms_still_work(sample: Sample) -> None:
    code, out, _ = ketch(sample.repo, "cat-file", "refs/heads/sp")
    assert code == 0 and out.startswith(b"tree ")
    code, out, _ = ketch(sample.repo, "cat-file", "sp:data")
    assert out == b"split data\n"
