"""Deterministic benchmark corpus, generated once into a cache dir and reused.

- ``vm-image``: a VM-disk-like file made of 64 KiB..4 MiB runs (4 KiB aligned)
  of random blocks, zero blocks, low-entropy blocks, and blocks repeated (as
  is, or with a few bytes changed) from earlier in the file. Streamed to disk.
- ``sql-dump``: a mysqldump-like text: CREATE TABLE and extended INSERT lines
  with varied numbers, names, dates and amounts.

Both are a pure function of (CORPUS_VERSION, SEED, scale): change either
generator and bump CORPUS_VERSION so cached copies are regenerated.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CORPUS_VERSION = 1
SEED = 0x6B657463  # "ketc"
MIB = 1 << 20
VM_BYTES = 1 << 30  # 1 GiB at scale 1
SQL_BYTES = 300 * 1000 * 1000  # ~300 MB at scale 1
BLOCK = 4096


@dataclass(frozen=True)
class CorpusFile:
    name: str  # also the ref name used by `split -n`
    path: Path
    size: int


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise OSError(f"short read at offset {offset}")
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


# ---------------------------------------------------------------------------
# VM image

_VM_KINDS = ("random", "zero", "lowent", "repeat", "mutated")
_VM_WEIGHTS = (0.35, 0.15, 0.10, 0.25, 0.15)


def _vm_run_length(rng: np.random.Generator) -> int:
    """Log-uniform between 64 KiB and 4 MiB, 4 KiB aligned."""
    n = int(2.0 ** rng.uniform(16.0, 22.0))
    return max(BLOCK, n - n % BLOCK)


def _vm_block(kind: str, n: int, written: int, fd: int, rng: np.random.Generator) -> bytes:
    if kind in ("repeat", "mutated") and written < n:
        kind = "random"  # nothing to repeat yet
    if kind == "random":
        return rng.bytes(n)
    if kind == "zero":
        return bytes(n)
    if kind == "lowent":
        # Text-ish: 16 symbols, compresses about 2:1 but does not dedup.
        return (rng.integers(0, 16, size=n, dtype=np.uint8) + 0x41).tobytes()
    offset = int(rng.integers(0, (written - n) // BLOCK + 1)) * BLOCK
    data = _pread_all(fd, n, offset)
    if kind == "repeat":
        return data
    buf = bytearray(data)
    for pos in rng.integers(0, n - 16, size=int(rng.integers(1, 8))):
        buf[int(pos) : int(pos) + 16] = rng.bytes(16)
    return bytes(buf)


def generate_vm_image(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 1])
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        while written < size:
            n = min(size - written, _vm_run_length(rng))
            kind = str(rng.choice(_VM_KINDS, p=_VM_WEIGHTS))
            _write_all(fd, _vm_block(kind, n, written, fd, rng))
            written += n
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# SQL dump

_FIRST = (
    "Alice Bob Carol David Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy "
    "Rupert Sybil Trent Victor Walter Xavier Yvonne Zoe Amir Bea Chen Dmitri Eva Farah"
).split()
_LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
    "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson"
).split()
_CITIES = (
    "Berlin Paris Lyon Madrid Lisbon Rome Vienna Prague Warsaw Oslo Dublin Leeds Porto "
    "Ghent Turin Krakow Bergen Malmo Tartu Riga Vilnius Zagreb Split Brno"
).split()
_STATUS = ("new", "paid", "shipped", "delivered", "returned", "cancelled")
_EVENTS = ("login", "logout", "view", "click", "search", "add_to_cart", "checkout", "error")
_BASE_DAY = dt.date(2012, 1, 1)
_DATES = [(_BASE_DAY + dt.timedelta(days=d)).isoformat() for d in range(4500)]

_SCHEMAS = {
    "customers": (
        "  `id` int NOT NULL AUTO_INCREMENT,\n  `first_name` varchar(64) NOT NULL,\n"
        "  `last_name` varchar(64) NOT NULL,\n  `email` varchar(128) NOT NULL,\n"
        "  `signup_date` date NOT NULL,\n  `balance` decimal(12,2) NOT NULL,\n"
        "  `city` varchar(64) DEFAULT NULL,\n  PRIMARY KEY (`id`)"
    ),
    "orders": (
        "  `id` bigint NOT NULL AUTO_INCREMENT,\n  `customer_id` int NOT NULL,\n"
        "  `created_at` datetime NOT NULL,\n  `amount` decimal(12,2) NOT NULL,\n"
        "  `quantity` int NOT NULL,\n  `status` varchar(16) NOT NULL,\n  PRIMARY KEY (`id`)"
    ),
    "events": (
        "  `id` bigint NOT NULL AUTO_INCREMENT,\n  `customer_id` int NOT NULL,\n"
        "  `at` datetime NOT NULL,\n  `kind` varchar(32) NOT NULL,\n"
        "  `payload` text,\n  PRIMARY KEY (`id`)"
    ),
}
_SHARES = {"customers": 0.2, "orders": 0.45, "events": 0.35}
_ROWS_PER_INSERT = 100


def _time_of_day(secs: int) -> str:
    return f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"


def _customer_rows(rng: np.random.Generator, start: int, n: int) -> list[str]:
    f = rng.integers(0, len(_FIRST), n).tolist()
    la = rng.integers(0, len(_LAST), n).tolist()
    d = rng.integers(0, len(_DATES), n).tolist()
    bal = rng.integers(0, 10_000_000, n).tolist()
    c = rng.integers(0, len(_CITIES), n).tolist()
    return [
        f"({start + i},'{_FIRST[f[i]]}','{_LAST[la[i]]}',"
        f"'{_FIRST[f[i]].lower()}.{_LAST[la[i]].lower()}{start + i}@example.com',"
        f"'{_DATES[d[i]]}',{bal[i] // 100}.{bal[i] % 100:02d},'{_CITIES[c[i]]}')"
        for i in range(n)
    ]


def _order_rows(rng: np.random.Generator, start: int, n: int) -> list[str]:
    cust = rng.integers(1, 200_000, n).tolist()
    d = rng.integers(0, len(_DATES), n).tolist()
    t = rng.integers(0, 86400, n).tolist()
    amt = rng.lognormal(8.0, 1.2, n).astype(np.int64).tolist()
    q = rng.integers(1, 20, n).tolist()
    s = rng.integers(0, len(_STATUS), n).tolist()
    return [
        f"({start + i},{cust[i]},'{_DATES[d[i]]} {_time_of_day(t[i])}',"
        f"{amt[i] // 100}.{amt[i] % 100:02d},{q[i]},'{_STATUS[s[i]]}')"
        for i in range(n)
    ]


def _event_rows(rng: np.random.Generator, start: int, n: int) -> list[str]:
    cust = rng.integers(1, 200_000, n).tolist()
    d = rng.integers(0, len(_DATES), n).tolist()
    t = rng.integers(0, 86400, n).tolist()
    k = rng.integers(0, len(_EVENTS), n).tolist()
    page = rng.integers(1, 5000, n).tolist()
    ms = rng.integers(1, 3000, n).tolist()
    return [
        f"({start + i},{cust[i]},'{_DATES[d[i]]} {_time_of_day(t[i])}','{_EVENTS[k[i]]}',"
        f'\'{{\\"page\\":{page[i]},\\"ms\\":{ms[i]}}}\')'
        for i in range(n)
    ]


_ROW_MAKERS: dict[str, Callable[[np.random.Generator, int, int], list[str]]] = {
    "customers": _customer_rows,
    "orders": _order_rows,
    "events": _event_rows,
}


def _sql_table(rng: np.random.Generator, table: str, budget: int) -> Iterator[str]:
    yield (
        f"\n--\n-- Table structure for table `{table}`\n--\n\n"
        f"DROP TABLE IF EXISTS `{table}`;\n"
        f"CREATE TABLE `{table}` (\n{_SCHEMAS[table]}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;\n\n"
        f"LOCK TABLES `{table}` WRITE;\n"
    )
    produced, next_id = 0, 1
    while produced < budget:
        rows = _ROW_MAKERS[table](rng, next_id, _ROWS_PER_INSERT * 10)
        next_id += len(rows)
        for i in range(0, len(rows), _ROWS_PER_INSERT):
            line = f"INSERT INTO `{table}` VALUES {','.join(rows[i : i + _ROWS_PER_INSERT])};\n"
            produced += len(line)
            yield line
    yield "UNLOCK TABLES;\n"


def generate_sql_dump(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng([seed, 2])
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("-- MySQL dump 10.13  Distrib 8.0.36, for Linux (x86_64)\n--\n")
        f.write("-- Host: localhost    Database: shop\n")
        f.write("/*!40101 SET NAMES utf8mb4 */;\nSET FOREIGN_KEY_CHECKS=0;\n")
        for table, share in _SHARES.items():
            for chunk in _sql_table(rng, table, int(size * share)):
                f.write(chunk)
        f.write("SET FOREIGN_KEY_CHECKS=1;\n-- Dump completed\n")


# ---------------------------------------------------------------------------
# cache

_GENERATORS: dict[str, tuple[str, int, Callable[[Path, int, int], None]]] = {
    "vm-image": ("vm-image.img", VM_BYTES, generate_vm_image),
    "sql-dump": ("sql-dump.sql", SQL_BYTES, generate_sql_dump),
}


def _params(scale: float) -> dict[str, object]:
    sizes = {name: int(full * scale) // BLOCK * BLOCK for name, (_, full, _) in _GENERATORS.items()}
    return {"version": CORPUS_VERSION, "seed": SEED, "scale": scale, "target_sizes": sizes}


def _cached(directory: Path, params: dict[str, object]) -> list[CorpusFile] | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("params") != params:
        return None
    files = []
    for name, (filename, _, _) in _GENERATORS.items():
        path = directory / filename
        size = manifest.get("sizes", {}).get(name)
        if size is None or not path.is_file() or path.stat().st_size != size:
            return None
        files.append(CorpusFile(name, path, size))
    return files


def ensure_corpus(
    cache_dir: Path, scale: float, log: Callable[[str], None] = lambda s: None
) -> list[CorpusFile]:
    """The corpus for ``scale``, generated into ``cache_dir`` unless already there."""
    directory = cache_dir / f"corpus-v{CORPUS_VERSION}-scale-{scale:g}"
    params = _params(scale)
    cached = _cached(directory, params)
    if cached is not None:
        log(f"reusing corpus in {directory}")
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").unlink(missing_ok=True)
    targets = params["target_sizes"]
    assert isinstance(targets, dict)
    files, sizes = [], {}
    for name, (filename, _, generate) in _GENERATORS.items():
        path = directory / filename
        log(f"generating {name} ({targets[name] / 1e6:.0f} MB) into {path}")
        tmp = path.with_suffix(path.suffix + ".tmp")
        generate(tmp, targets[name], SEED)
        tmp.replace(path)
        sizes[name] = path.stat().st_size
        files.append(CorpusFile(name, path, sizes[name]))
    manifest = {"params": params, "sizes": sizes}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return files
