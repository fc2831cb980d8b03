"""gc leaves no garbage tree behind, whatever the threshold: every tree still
stored reaches all it names, so a save that finds one stored may count on it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import RunKetch
from tests.gitutil import git


def test_a_pack_with_little_garbage_but_a_garbage_tree_is_rewritten(
        tmp_path: Path, run_ketch: RunKetch) -> None:
    repo, data = tmp_path / "repo", tmp_path / "data"
    data.mkdir()
    for i in range(8):
        (data / f"f{i}").write_bytes(os.urandom(300_000))
    run_ketch("init", "-d", repo, check=True)
    run_ketch("save", "-d", repo, "-n", "b", "--date", "2026-01-01", data, check=True)
    old_tree = git(repo, "rev-parse", "b^{tree}").strip().decode()
    (data / "f0").rename(data / "renamed")  # new trees, the same blobs
    run_ketch("save", "-d", repo, "-n", "b", "--date", "2026-01-02", data, check=True)
    run_ketch("prune", "-d", repo, "b", "--keep-last", "1", check=True)
    # The first save's pack: 2.4 MB of live blobs and a few garbage trees, far
    # below the threshold by bytes.
    run_ketch("gc", "-d", repo, "--threshold", "50", check=True)
    gone = subprocess.run(["git", "--git-dir", str(repo), "cat-file", "-e", old_tree])
    assert gone.returncode != 0, "a garbage tree survived gc"
    git(repo, "fsck", "--strict")  # and what the kept save reaches is all there
