"""What restore does with what is already there (issue 17 item 8): it overwrites
by default, as bup and restic do, but says so (a count on the summary line,
each path with -v); --no-clobber keeps existing files and says which; an item
not restored names its real reason; a non-empty directory is never deleted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import RunKetch

FILES = {"a.txt": b"original a\n", "b.txt": b"original b\n", "d/inner": b"inner\n",
         "e": b"e file\n", "f": b"f file\n"}


@pytest.fixture
def saved(run_ketch: RunKetch, repo_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    for name, data in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    run_ketch("save", "-d", repo_dir, "-n", "t", src, check=True)
    return repo_dir, src


def _restore(run_ketch: RunKetch, saved: tuple[Path, Path], out: Path, *args: str
             ) -> tuple[int, list[str]]:
    repo, src = saved
    proc = run_ketch("restore", "-d", repo, "-C", out, *args, f"t/latest{src}/")
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    return proc.returncode, err.splitlines()


def _same_as_saved(out: Path) -> None:
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data, name


def _mess_up(out: Path) -> None:
    (out / "a.txt").write_bytes(b"my edit\n")  # an edited file
    shutil.rmtree(out / "d")
    (out / "d").write_bytes(b"a file where a directory goes\n")
    (out / "e").unlink()
    (out / "e").mkdir()  # an empty directory where a file goes
    (out / "b.txt").unlink()  # missing: restored either way


def test_first_restore_overwrites_nothing(run_ketch: RunKetch, saved: tuple[Path, Path],
                                          tmp_path: Path) -> None:
    code, err = _restore(run_ketch, saved, tmp_path / "out")
    assert code == 0, err
    assert err[-1].startswith("restored 5 files, "), err
    assert "overwritten" not in err[-1]
    _same_as_saved(tmp_path / "out")


def test_overwrites_are_counted_and_listed(run_ketch: RunKetch, saved: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    _restore(run_ketch, saved, out)
    _mess_up(out)
    code, err = _restore(run_ketch, saved, out)
    assert code == 0, err
    # a.txt (edited), f (as it was), d (a file, now a directory), e (an empty dir).
    assert err[-1].startswith("restored 5 files, "), err
    assert ", 4 overwritten" in err[-1], err
    assert len(err) == 1, err  # without -v, no list
    _same_as_saved(out)
    _mess_up(out)
    code, err = _restore(run_ketch, saved, out, "-v")
    assert code == 0, err
    listed = sorted(line for line in err if line.startswith("overwritten: "))
    assert listed == [f"overwritten: {out}/{n}" for n in ("a.txt", "d", "e", "f")], err
    _same_as_saved(out)


def test_no_clobber_keeps_existing_files(run_ketch: RunKetch, saved: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    _restore(run_ketch, saved, out)
    _mess_up(out)
    code, err = _restore(run_ketch, saved, out, "--no-clobber", "-v")
    assert code == 0, err
    assert (out / "a.txt").read_bytes() == b"my edit\n"
    assert (out / "d").read_bytes() == b"a file where a directory goes\n"
    assert (out / "e").is_dir() and (out / "f").read_bytes() == b"f file\n"
    assert (out / "b.txt").read_bytes() == b"original b\n"  # was missing: restored
    kept = sorted(line for line in err if line.startswith("kept: "))
    assert kept == [f"kept: {out}/{n}" for n in ("a.txt", "d", "e", "f")], err
    assert err[-1].startswith("restored 1 file, ") and ", 4 kept (--no-clobber)" in err[-1]
    assert "overwritten" not in err[-1]


def test_non_empty_directory_in_the_way_is_named_and_kept(
        run_ketch: RunKetch, saved: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    _restore(run_ketch, saved, out)
    (out / "f").unlink()
    (out / "f").mkdir()
    (out / "f" / "keep").write_bytes(b"keep me\n")
    code, err = _restore(run_ketch, saved, out)
    assert code == 2, err
    assert f"{out}/f: not restored: a non-empty directory is in the way" in err, err
    assert err[-1] == ("ketch: error: 1 item not restored "
                       "(blocked by a non-empty directory)"), err
    assert not any("verification" in line for line in err), err
    assert (out / "f" / "keep").read_bytes() == b"keep me\n"
    assert (out / "a.txt").read_bytes() == b"original a\n"

