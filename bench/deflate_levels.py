"""Deflate/inflate speed and ratio of zlib and ISA-L levels on the benchmark
corpus's bup chunks, one core, in CPU time (best of N), so that other jobs on
the machine bend the figures less than wall time would.

    PYTHONPATH=src python bench/deflate_levels.py [CORPUS_DATA_DIR] [REPS]
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from collections.abc import Callable

from isal import isal_zlib

from ketch.split import split_chunks

M = 1 << 20
METHODS: list[tuple[str, Callable[[bytes, int], bytes], int]] = [
    ("zlib 1", zlib.compress, 1), ("zlib 6", zlib.compress, 6),
    ("ISA-L 1", isal_zlib.compress, 1), ("ISA-L 2", isal_zlib.compress, 2),
    ("ISA-L 3", isal_zlib.compress, 3),
]


def file_chunks(path: str, slices: list[tuple[int, int]]) -> list[bytes]:
    out: list[bytes] = []
    with open(path, "rb") as f:
        for off, n in slices:
            f.seek(off)
            out += [bytes(c[0]) for c in split_chunks([f.read(n)])]
    return out


def small_files(path: str) -> list[bytes]:
    out = []
    for root, _, files in os.walk(path):
        for name in sorted(files):
            p = os.path.join(root, name)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    out.append(f.read())
    return out


def cpu_best(fn: Callable[[], object], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best


def main() -> None:
    data = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/ketch-bench/corpus-v2-scale-1/data"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    sets = {
        "vm-image.img (4 x 48 MiB)": file_chunks(f"{data}/vm-image.img",
                                                 [(i * 256 * M, 48 * M) for i in range(4)]),
        "sql-dump.sql (128 MiB)": file_chunks(f"{data}/sql-dump.sql", [(0, 128 * M)]),
        "etc-tree (small files)": small_files(f"{data}/etc-tree"),
    }
    for name, chunks in sets.items():
        total = sum(map(len, chunks))
        print(f"{name}: {len(chunks)} pieces, {total / 1e6:.1f} MB, "
              f"mean {total / len(chunks):.0f} B")
        measure(chunks, total, reps)


def measure(chunks: list[bytes], total: int, reps: int) -> None:
    for label, compress, level in METHODS:
        out = sum(len(compress(c, level)) for c in chunks)
        t = cpu_best(lambda c=compress, lv=level: [c(x, lv) for x in chunks], reps)
        print(f"  deflate {label}: {total / t / 1e6:7.1f} MB/s  ratio {out / total:.4f}")
    zs = [zlib.compress(c, 1) for c in chunks]
    for label, mk in (("zlib", zlib.decompressobj), ("ISA-L", isal_zlib.decompressobj)):
        t = cpu_best(lambda m=mk: [m().decompress(z, len(c) + 1)
                                   for z, c in zip(zs, chunks, strict=True)], reps)
        print(f"  inflate {label}: {total / t / 1e6:7.1f} MB/s of output")
    for label, fn in (("zlib crc32", zlib.crc32), ("ISA-L crc32", isal_zlib.crc32),
                      ("zlib adler32", zlib.adler32), ("ISA-L adler32", isal_zlib.adler32)):
        t = cpu_best(lambda f=fn: [f(x) for x in chunks], reps)
        print(f"  {label}: {total / t / 1e6:7.1f} MB/s")

if __name__ == "__main__":
    main()
