"""A local repository's reads of small objects scattered over a big pack (a
walk of a save's trees and .bupm files) keep the process's resident set
bounded: pages of a mapped pack count in it once touched."""

from __future__ import annotations

import random
from pathlib import Path

from ketch.git import objects as gobj
from ketch.localrepo import LocalRepository, init_repository


def _mapped_pack_kib() -> int:
    """Resident KiB of this process's mappings of pack files."""
    total = 0
    in_pack = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:  # a mapping's first line
                in_pack = len(head) >= 6 and head[-1].endswith(".pack")
            elif in_pack and head[0] == "Rss:":
                total += int(head[1])
    return total


def test_scattered_small_reads_keep_the_mapped_pack_small(tmp_path: Path) -> None:
    path = str(tmp_path / "repo")
    init_repository(path)
    rng = random.Random(3)
    repo = LocalRepository(path)
    w = repo.writable().writer()
    small: list[bytes] = []
    # 1,200 small objects 64 KiB of incompressible data apart: a 77 MB pack.
    for i in range(1200):
        w.write(gobj.BLOB, rng.randbytes(64 << 10))
        small.append(w.write(gobj.BLOB, b"small %d\n" % i))
    w.close()
    repo.close()
    repo = LocalRepository(path)
    peak = 0
    for oid in small:
        assert repo.read(oid)[1].startswith(b"small ")
        peak = max(peak, _mapped_pack_kib())
    repo.close()
    pack_kib = sum(p.stat().st_size for p in (tmp_path / "repo").rglob("*.pack")) >> 10
    assert pack_kib > 70_000
    # Before, reads counted only their objects' bytes (9 KiB here) and the
    # pack stayed mapped: its faulted-in pages were all resident at the end.
    assert peak <= 40 << 10, (peak, pack_kib)
