"""A reader that opened the repository before a gc still reads everything kept."""

from __future__ import annotations

from pathlib import Path

from ketch.git import objects as gobj
from ketch.localrepo import LocalRepository
from tests.conftest import RunKetch
from tests.lifecycle.gcsetup import prune, saved_repo


def _walk_all(r: LocalRepository, tree: bytes) -> int:
    n = 0
    for e in gobj.decode_tree(r.read_typed(tree, gobj.TREE)):
        if e.mode == gobj.MODE_TREE:
            n += _walk_all(r, e.oid)
        else:
            r.read(e.oid)
            n += 1
    return n


def test_reader_opened_before_gc_reads_rewritten_packs(run_ketch: RunKetch,
                                                       tmp_path: Path) -> None:
    repo = saved_repo(run_ketch, tmp_path, [0, 1, 2, 3])
    prune(repo, {1, 3})
    with LocalRepository(str(repo)) as r:
        head = r.read_ref(b"refs/heads/m")
        assert head is not None and r.index.idx_names  # its index knows the old packs
        p = run_ketch("gc", "-d", repo, "--threshold", "0")
        assert p.returncode == 0, p.stderr.decode()
        tree = gobj.decode_commit(r.read_typed(head, gobj.COMMIT)).tree
        assert _walk_all(r, tree) > 0


def test_maintenance_beside_gc_never_fails(run_ketch: RunKetch, tmp_path: Path) -> None:
    """A save's after-save housekeeping (midx, bloom) lists the idx files, then
    opens them: gc may hide one in between."""
    import shutil
    import subprocess
    import sys

    from ketch.git.objindex import ObjectIndex
    from tests.conftest import SRC_DIR

    base = saved_repo(run_ketch, tmp_path, [0, 1, 2, 3, 4, 5])
    prune(base, {2, 5})
    env = {"PYTHONPATH": str(SRC_DIR), "PATH": "/usr/bin:/bin"}
    rounds = 0
    for i in range(8):
        repo = tmp_path / f"r{i}"
        shutil.copytree(base, repo)
        gc = subprocess.Popen([sys.executable, "-m", "ketch", "gc", "-d", repo, "--threshold",
                               "0"], env=env)
        with ObjectIndex(repo / "objects" / "pack") as ix:
            while gc.poll() is None:
                ix.maintain()
                rounds += 1
        assert gc.wait() == 0
    assert rounds > 8
