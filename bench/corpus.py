"""Deterministic benchmark corpus, generated once into a cache dir and reused.

All of it lives under one directory, ``DATA`` (``<cache>/corpus-v2-scale-S/data``),
which the ``cycle`` phase saves as a whole:

- ``etc-tree/``: a configuration tree: 20,000 files, ~150 MB at scale 1, mostly
  small text files (log-normal sizes, a few hundred bytes to a few hundred KB),
  some scripts (0755), secrets (0600) and binary files, a few larger files that
  fill the byte budget, about 6 levels of directories, ~1% symlinks (to files,
  to directories, a few dangling) and deterministic mtimes.
- ``vm-image.img``: a VM-disk-like file made of 64 KiB..4 MiB runs (4 KiB aligned)
  of random blocks, zero blocks, low-entropy blocks, and blocks repeated (as
  is, or with a few bytes changed) from earlier in the file. Streamed to disk.
- ``sql-dump.sql``: a mysqldump-like text: CREATE TABLE and extended INSERT lines
  with varied numbers, names, dates and amounts.

The ``split`` phase uses the two big files. Everything is a pure function of
(CORPUS_VERSION, SEED, scale): change a generator and bump CORPUS_VERSION so
cached copies are regenerated.

``mutate_day`` applies "a realistic day" of changes to a *copy* of DATA (never
to the cache): 1% of the image rewritten in place in ~50 places, rows inserted
in the middle of the dump and rows changed, tree files edited, added, deleted.
It is deterministic too (its own RNG stream of SEED).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CORPUS_VERSION = 2  # 2: everything under data/, plus etc-tree
SEED = 0x6B657463  # "ketc"
MIB = 1 << 20
VM_BYTES = 1 << 30  # 1 GiB at scale 1
SQL_BYTES = 300 * 1000 * 1000  # ~300 MB at scale 1
TREE_FILES = 20_000  # at scale 1
TREE_BYTES = 150 * 1000 * 1000  # ~150 MB at scale 1
TREE_DEPTH = 6
DATA_DIR = "data"
TREE_DIR = "etc-tree"
BLOCK = 4096


@dataclass(frozen=True)
class CorpusFile:
    name: str  # also the ref name used by `split -n`
    path: Path
    size: int  # bytes; for a directory, of the regular files in it


@dataclass(frozen=True)
class Corpus:
    data_dir: Path  # DATA: everything below, saved as a whole by the cycle phase
    parts: list[CorpusFile]  # etc-tree (a directory), vm-image, sql-dump
    tree_stats: dict[str, int]  # etc-tree: files, dirs, symlinks, bytes

    @property
    def files(self) -> list[CorpusFile]:
        """The single big files (what `split` measures)."""
        return [p for p in self.parts if p.path.is_file()]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)


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
# configuration tree

_WORDS = (
    "acl address alias allow apache2 apparmor apt auth backend bind bootstrap buffer cache "
    "cert chain charset chroot cipher client cluster compress conf config cron daemon debug "
    "default deny device dhcp disk dns domain driver enable endpoint env exec facility filter "
    "firewall format gateway group handler header host hostname http include init interface "
    "ipv4 ipv6 journal kernel key keepalive level limit listen locale log logrotate mail "
    "master max memory min mode module mount mysql name netmask network nginx nofile ntp "
    "option owner pam passwd path pid pool port postfix prefix priority profile protocol "
    "proxy queue realm redis relay remote resolver retry root route rule sasl schedule "
    "secret security server service session shell size socket ssh ssl stack storage "
    "subnet sudo syslog systemd target tcp template timeout timer timezone tls token udev "
    "udp umask unit upstream user uuid value verify version virtual volume watch worker "
    "xattr zone"
).split()
_EXTS = ("conf", "conf", "conf", "cfg", "ini", "rules", "list", "json", "yaml", "xml", "")
_BIN_EXTS = ("db", "cache", "bin", "gz")
_SEPS = (" ", " ", " ", " ", " = ", ", ", "\n", "\n", "\n# ", "\n\n[", "] ", "/", ":")


def _tokens(rng: np.random.Generator) -> list[str]:
    """A vocabulary of config-ish tokens: words, words with digits, addresses,
    paths, hex ids. Drawn once per generator, so different seeds differ."""
    n = len(_WORDS)
    out = list(_WORDS)
    a, b, c = (rng.integers(0, n, 3000).tolist() for _ in range(3))
    nums = rng.integers(0, 65536, 3000).tolist()
    for i in range(3000):
        kind = i % 6
        if kind == 0:
            out.append(f"{_WORDS[a[i]]}_{_WORDS[b[i]]}")
        elif kind == 1:
            out.append(f"{_WORDS[a[i]]}{nums[i] % 100}")
        elif kind == 2:
            out.append(f"10.{nums[i] >> 8}.{nums[i] & 255}.{b[i] % 255}")
        elif kind == 3:
            out.append(f"/{_WORDS[a[i]]}/{_WORDS[b[i]]}/{_WORDS[c[i]]}")
        elif kind == 4:
            out.append(f"{nums[i] * 65536 + a[i] * 97 + b[i]:08x}")
        else:
            out.append(str(nums[i]))
    return out


def _text(rng: np.random.Generator, vocab: list[str], size: int) -> bytes:
    """About ``size`` bytes of config-like text (exactly ``size``), unique per call."""
    k = size // 7 + 8
    toks = rng.integers(0, len(vocab), k).tolist()
    seps = rng.integers(0, len(_SEPS), k).tolist()
    parts: list[str] = []
    total = 0
    for t, sp in zip(toks, seps, strict=True):
        piece = vocab[t] + _SEPS[sp]
        parts.append(piece)
        total += len(piece)
        if total >= size:
            break
    while total < size:  # short words: top up
        piece = vocab[int(rng.integers(0, len(vocab)))] + "\n"
        parts.append(piece)
        total += len(piece)
    data = "".join(parts).encode("ascii")[: size - 1]
    return data + b"\n" if size else b""


def _tree_dirs(rng: np.random.Generator, n_dirs: int) -> list[str]:
    """Relative directory paths ("" is the root), each parent before its children."""
    dirs, depth = [""], [0]
    names: dict[str, set[str]] = {"": set()}
    for i in range(n_dirs):
        while True:  # a parent that may still have children
            p = int(rng.integers(0, len(dirs)))
            if depth[p] < TREE_DEPTH:
                break
        word = _WORDS[int(rng.integers(0, len(_WORDS)))]
        name = word + (".d" if rng.random() < 0.3 else "")
        if name in names[dirs[p]]:
            name = f"{word}-{i}"
        names[dirs[p]].add(name)
        path = f"{dirs[p]}/{name}" if dirs[p] else name
        dirs.append(path)
        depth.append(depth[p] + 1)
        names[path] = set()
    return dirs


def _tree_sizes(rng: np.random.Generator, n_files: int, total: int) -> list[int]:
    """Log-normal small files (median ~2.4 KB, 120 B..400 KB), then a few large
    files (~0.1% of the count) that take what is left of ``total``."""
    n_large = max(1, round(n_files * 0.001))
    small = np.clip(rng.lognormal(np.log(2400.0), 1.3, n_files - n_large), 120, 400_000)
    left = total - float(small.sum())
    floor = 256 * 1024 * n_large
    if left < floor:  # the small files alone are too big for the budget
        small *= max(total - floor, 0) / float(small.sum())
        left = total - float(small.sum())
    weights = rng.uniform(0.5, 1.5, n_large)
    large = weights / weights.sum() * left
    sizes = [int(x) for x in small] + [int(x) for x in large]
    order = rng.permutation(len(sizes)).tolist()  # large ones anywhere
    return [sizes[i] for i in order]


_BASE_MTIME = 1_600_000_000  # 2020-09-13


def _file_kind(rng: np.random.Generator, size: int) -> tuple[str, int]:
    """(kind, mode) for a file of ``size`` bytes."""
    r = float(rng.random())
    if size > 1_000_000:
        return ("binary", 0o644) if r < 0.5 else ("text", 0o644)
    if r < 0.02:
        return "binary", 0o644
    if r < 0.07:
        return "script", 0o755
    if r < 0.10:
        return "secret", 0o600
    return "text", 0o644


def generate_config_tree(root: Path, n_files: int, total: int, seed: int) -> dict[str, int]:
    """Write the configuration tree into ``root`` (must not exist); its stats."""
    rng = np.random.default_rng([seed, 3])
    vocab = _tokens(rng)
    dirs = _tree_dirs(rng, max(4, n_files // 12))
    root.mkdir(parents=True)
    for d in dirs[1:]:
        (root / d).mkdir()
    sizes = _tree_sizes(rng, n_files, total)
    weights = rng.pareto(1.2, len(dirs)) + 0.05  # a few crowded dirs (think ssl/certs)
    where = rng.choice(len(dirs), size=n_files, p=weights / weights.sum()).tolist()
    files: list[str] = []
    written = 0
    for i, (size, d) in enumerate(zip(sizes, where, strict=True)):
        kind, mode = _file_kind(rng, size)
        word = _WORDS[int(rng.integers(0, len(_WORDS)))]
        if kind == "binary":
            name = f"{word}-{i}.{_BIN_EXTS[i % len(_BIN_EXTS)]}"
            data = rng.bytes(size // 2) + bytes(size - size // 2)  # half random, half zeros
        elif kind == "script":
            name = f"{word}-{i}"
            data = b"#!/bin/sh\nset -e\n" + _text(rng, vocab, max(size - 17, 1))
        else:
            ext = _EXTS[i % len(_EXTS)]
            name = f"{word}-{i}.{ext}" if ext else f"{word}-{i}"
            data = _text(rng, vocab, size)
        rel = f"{dirs[d]}/{name}" if dirs[d] else name
        path = root / rel
        path.write_bytes(data)
        os.chmod(path, mode)
        t = _BASE_MTIME + int(rng.integers(0, 3 * 365 * 86400))
        os.utime(path, (t, t))
        files.append(rel)
        written += len(data)
    n_links = max(1, n_files // 100)
    for j in range(n_links):
        d = dirs[int(rng.integers(0, len(dirs)))]
        r = float(rng.random())
        if r < 0.05:
            target = f"../missing-{j}/{_WORDS[j % len(_WORDS)]}.conf"  # dangling
        else:
            pool = dirs[1:] if r < 0.15 else files
            dest = pool[int(rng.integers(0, len(pool)))]
            target = os.path.relpath(dest, d or ".")
        link = root / d / f"{_WORDS[j % len(_WORDS)]}-link-{j}"
        os.symlink(target, link)
        t = _BASE_MTIME + int(rng.integers(0, 3 * 365 * 86400))
        os.utime(link, (t, t), follow_symlinks=False)
    for d in reversed(dirs):  # children first: setting a dir's mtime is the last touch
        t = _BASE_MTIME + int(rng.integers(0, 3 * 365 * 86400))
        os.utime(root / d if d else root, (t, t))
    return {"files": n_files, "dirs": len(dirs), "symlinks": n_links, "bytes": written}


# ---------------------------------------------------------------------------
# "a realistic day" of changes, applied to a copy of DATA


@dataclass
class DayStats:
    image_places: int = 0
    image_bytes: int = 0
    dump_rows_inserted: int = 0
    dump_rows_changed: int = 0
    dump_bytes: int = 0
    tree_edited: int = 0
    tree_added: int = 0
    tree_deleted: int = 0
    tree_bytes: int = 0

    @property
    def changed_bytes(self) -> int:
        """Bytes newly written (rewritten, inserted, edited, added)."""
        return self.image_bytes + self.dump_bytes + self.tree_bytes

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "changed_bytes": self.changed_bytes}


def _scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


def _mutate_image(path: Path, rng: np.random.Generator, places: int, stats: DayStats) -> None:
    """Rewrite 1% of the image in place: ``places`` runs of random bytes (4 KiB
    aligned, one per equal segment, so they never overlap)."""
    size = path.stat().st_size
    run = max(BLOCK, round(size / 100 / places / BLOCK) * BLOCK)
    segment = size // places
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(places):
            room = max(segment - run, 0) // BLOCK
            offset = i * segment + int(rng.integers(0, room + 1)) * BLOCK
            n = min(run, size - offset)
            if n <= 0:
                continue
            data, done = memoryview(rng.bytes(n)), 0
            while done < n:
                done += os.pwrite(fd, data[done:], offset + done)
            stats.image_places += 1
            stats.image_bytes += n
    finally:
        os.close(fd)


def _change_rows(line: str, rng: np.random.Generator, count: int) -> tuple[str, int, int]:
    """``line`` (an extended INSERT) with ``count`` of its rows regenerated (same
    ids, new values); how many rows that was, and how many bytes they take."""
    head, _, body = line.partition(" VALUES (")
    table = head.split("`")[1]
    rows = body[: -len(");\n")].split("),(")
    written = 0
    picks = rng.choice(len(rows), size=min(count, len(rows)), replace=False).tolist()
    for j in picks:
        row_id = int(rows[j].split(",", 1)[0])
        new = _ROW_MAKERS[table](rng, row_id, 1)[0][1:-1]
        rows[j] = new
        written += len(new)
    return f"{head} VALUES ({'),('.join(rows)});\n", len(picks), written


def _mutate_dump(
    path: Path, rng: np.random.Generator, inserted: int, changed: int, stats: DayStats
) -> None:
    """Insert ``inserted`` rows (new INSERT lines) after the middle INSERT line,
    change ``changed`` existing rows (spread over random lines); rewrite the file
    (as a new dump would be), renamed over the old one."""
    with open(path, encoding="ascii", newline="") as f:
        n_lines = sum(1 for line in f if line.startswith("INSERT INTO"))
    if n_lines == 0:
        return
    hits = np.bincount(rng.integers(0, n_lines, changed), minlength=n_lines).tolist()
    middle = n_lines // 2
    tmp = path.with_name(path.name + ".day")
    k = 0
    with (
        open(path, encoding="ascii", newline="") as src,
        open(tmp, "w", encoding="ascii", newline="") as dst,
    ):
        for line in src:
            if not line.startswith("INSERT INTO"):
                dst.write(line)
                continue
            if hits[k]:
                line, rows_changed, n = _change_rows(line, rng, hits[k])
                stats.dump_rows_changed += rows_changed
                stats.dump_bytes += n
            dst.write(line)
            if k == middle:
                table = line.split("`")[1]
                next_id = 900_000_000
                left = inserted
                while left > 0:
                    rows = _ROW_MAKERS[table](rng, next_id, min(left, _ROWS_PER_INSERT))
                    extra = f"INSERT INTO `{table}` VALUES {','.join(rows)};\n"
                    dst.write(extra)
                    next_id += len(rows)
                    left -= len(rows)
                    stats.dump_rows_inserted += len(rows)
                    stats.dump_bytes += len(extra)
            k += 1
    os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
    tmp.replace(path)


def _tree_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                out.append(p)
    return out


def _mutate_tree(
    root: Path, rng: np.random.Generator, edits: int, adds: int, deletes: int, stats: DayStats
) -> None:
    """Edit ``edits`` files (a line or two replaced and one appended, written back
    in place like an editor's save), add ``adds`` files (some in a new
    directory), delete ``deletes`` files."""
    vocab = _tokens(rng)
    files = _tree_files(root)
    order = rng.permutation(len(files)).tolist()
    edit_set = [files[i] for i in order[:edits]]
    delete_set = [files[i] for i in order[edits : edits + deletes]]
    for p in edit_set:
        data = p.read_bytes()
        at = int(rng.integers(0, len(data) + 1))
        cut = min(len(data) - at, int(rng.integers(0, 200)))
        new = _text(rng, vocab, int(rng.integers(20, 200)))
        tail = _text(rng, vocab, int(rng.integers(20, 120)))
        p.write_bytes(data[:at] + new + data[at + cut :] + tail)
        stats.tree_edited += 1
        stats.tree_bytes += len(new) + len(tail)
    for p in delete_set:
        p.unlink()
        stats.tree_deleted += 1
    dirs = sorted({p.parent for p in files})
    new_dir = root / "day-added.d"
    new_dir.mkdir(exist_ok=True)
    sizes = np.clip(rng.lognormal(np.log(2400.0), 1.3, adds), 120, 400_000).astype(int).tolist()
    for i, size in enumerate(sizes):
        d = new_dir if i % 10 == 0 else dirs[int(rng.integers(0, len(dirs)))]
        path = d / f"day-{_WORDS[i % len(_WORDS)]}-{i}.conf"
        path.write_bytes(_text(rng, vocab, size))
        stats.tree_added += 1
        stats.tree_bytes += size


def mutate_day(data_dir: Path, scale: float, seed: int = SEED) -> DayStats:
    """Apply "a realistic day" to ``data_dir`` (a copy of DATA!), deterministically.

    At scale 1: 1% of the image rewritten in 50 places, 2,000 rows inserted in
    the middle of the dump and 1,000 changed, 200 tree files edited, 100 added,
    50 deleted. The counts scale with ``scale`` (at least 1 each); the image's
    share stays 1% in 50 places."""
    rng = np.random.default_rng([seed, 4])
    stats = DayStats()
    _mutate_image(data_dir / _GENERATORS["vm-image"][0], rng, 50, stats)
    _mutate_dump(
        data_dir / _GENERATORS["sql-dump"][0],
        rng,
        _scaled(2000, scale),
        _scaled(1000, scale),
        stats,
    )
    _mutate_tree(
        data_dir / TREE_DIR,
        rng,
        _scaled(200, scale),
        _scaled(100, scale),
        _scaled(50, scale),
        stats,
    )
    return stats


# ---------------------------------------------------------------------------
# cache

_GENERATORS: dict[str, tuple[str, int, Callable[[Path, int, int], None]]] = {
    "vm-image": ("vm-image.img", VM_BYTES, generate_vm_image),
    "sql-dump": ("sql-dump.sql", SQL_BYTES, generate_sql_dump),
}


def _params(scale: float) -> dict[str, object]:
    sizes = {name: int(full * scale) // BLOCK * BLOCK for name, (_, full, _) in _GENERATORS.items()}
    tree = {"files": max(20, round(TREE_FILES * scale)), "bytes": int(TREE_BYTES * scale)}
    return {
        "version": CORPUS_VERSION,
        "seed": SEED,
        "scale": scale,
        "target_sizes": sizes,
        "tree": tree,
    }


def _cached(directory: Path, params: dict[str, object]) -> Corpus | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("params") != params:
        return None
    data = directory / DATA_DIR
    tree_stats = manifest.get("tree_stats", {})
    if not (data / TREE_DIR).is_dir() or "bytes" not in tree_stats:
        return None
    parts = [CorpusFile(TREE_DIR, data / TREE_DIR, tree_stats["bytes"])]
    for name, (filename, _, _) in _GENERATORS.items():
        path = data / filename
        size = manifest.get("sizes", {}).get(name)
        if size is None or not path.is_file() or path.stat().st_size != size:
            return None
        parts.append(CorpusFile(name, path, size))
    return Corpus(data, parts, tree_stats)


def ensure_corpus(
    cache_dir: Path, scale: float, log: Callable[[str], None] = lambda s: None
) -> Corpus:
    """The corpus for ``scale``, generated into ``cache_dir`` unless already there."""
    directory = cache_dir / f"corpus-v{CORPUS_VERSION}-scale-{scale:g}"
    params = _params(scale)
    cached = _cached(directory, params)
    if cached is not None:
        log(f"reusing corpus in {directory}")
        return cached
    data = directory / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").unlink(missing_ok=True)
    tree = params["tree"]
    assert isinstance(tree, dict)
    log(f"generating {TREE_DIR} ({tree['files']} files, {tree['bytes'] / 1e6:.0f} MB)")
    tmp_tree = data / (TREE_DIR + ".tmp")
    shutil.rmtree(tmp_tree, ignore_errors=True)
    shutil.rmtree(data / TREE_DIR, ignore_errors=True)
    tree_stats = generate_config_tree(tmp_tree, tree["files"], tree["bytes"], SEED)
    tmp_tree.replace(data / TREE_DIR)
    parts = [CorpusFile(TREE_DIR, data / TREE_DIR, tree_stats["bytes"])]
    targets = params["target_sizes"]
    assert isinstance(targets, dict)
    sizes = {}
    for name, (filename, _, generate) in _GENERATORS.items():
        path = data / filename
        log(f"generating {name} ({targets[name] / 1e6:.0f} MB) into {path}")
        tmp = path.with_suffix(path.suffix + ".tmp")
        generate(tmp, targets[name], SEED)
        tmp.replace(path)
        sizes[name] = path.stat().st_size
        parts.append(CorpusFile(name, path, sizes[name]))
    manifest = {"params": params, "sizes": sizes, "tree_stats": tree_stats}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return Corpus(data, parts, tree_stats)
