"""One snapshot writer for save, split and dumps (issue 10 item 6): each leaves
the repository tidied as a save does."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import RunKetch


def test_split_into_a_branch_maintains_the_repository(tmp_path: Path,
                                                       run_ketch: RunKetch) -> None:
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    data = tmp_path / "data"
    data.write_bytes(bytes(range(256)) * 4000)
    run_ketch("split", "-d", repo, "-n", "s", data, check=True)
    # bup's housekeeping after a write (as after a save): the bloom filter is there.
    assert (repo / "objects" / "pack" / "bup.bloom").exists()
    back = run_ketch("join", "-d", repo, "s", check=True)
    assert back.stdout == data.read_bytes()
