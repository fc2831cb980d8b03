"""A changing corpus for the lifecycle phase: one tree, many daily versions.

Deterministic (a pure function of seed, scale and day), held as a model in
memory and written out incrementally, so that a second instance replays the
same days and writes only the days it is asked for (the fresh repositories of
the kept saves). At scale 1, about 240 MB on day 0:

- ``srv/``: ~300 files, ~100 MB, log-normal sizes; 70% text, 30% random binary.
  Every day a few are edited (a paragraph rewritten), and one in two days one
  is deleted.
- ``srv/archive.tar``: 80 MB of random bytes that never change.
- ``db/app.sql``: a ~40 MB mysqldump-like file, rewritten every day: rows
  appended, hot recent rows updated, a few scattered rows updated, a run of
  old rows deleted.
- ``vm/disk.img``: 16 MB of random, zero and low-entropy blocks; ~0.5% of it
  rewritten in place every day, in 6 places.
- ``log/*.log``: 4 logs growing ~250 KB a day each, rotated weekly (``X.log``
  becomes ``X.log.1``, the previous ``X.log.1`` is deleted).
- ``uploads/DAY/``: ~8 files a day (~120 KB each), deleted after 12 days.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

SEED = 0x6C696665  # "life"
START = dt.datetime(2025, 11, 20, 3, 0, tzinfo=dt.UTC)  # crosses two month ends
BLOCK = 4096
MB = 1_000_000

TREE_FILES, TREE_BYTES = 300, 100 * MB
ARCHIVE_BYTES = 80 * MB
DUMP_BYTES = 40 * MB
IMAGE_BYTES = 16 * MB
LOGS, LOG_DAY_BYTES, ROTATE_DAYS = 4, 250_000, 7
UPLOADS_PER_DAY, UPLOAD_BYTES, UPLOAD_DAYS = 8, 120_000, 12
EDITS_PER_DAY = 4
ROWS_PER_INSERT = 200  # rows per extended INSERT line of the dump
_STATUS = (b"new", b"paid", b"shipped", b"returned")

_WORDS = [
    w.encode()
    for w in (
        "alpha beta gamma delta server client backup restore config value key port "
        "host user group path file data index table row column the a of to in is "
        "for on with as by at from this that error warning info debug request "
        "response timeout retry cache memory disk network socket thread process "
        "queue worker job schedule daily weekly monthly yearly policy keep prune"
    ).split()
]


def _scaled(n: int, scale: float, least: int = 1) -> int:
    return max(least, round(n * scale))


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([SEED, *key])


def _text(rng: np.random.Generator, size: int) -> bytes:
    """``size`` bytes of word salad, in lines of about 10 words."""
    words = np.array(_WORDS, dtype=object)
    n = size // 5 + 16
    picked = words[rng.integers(0, len(words), n)]
    picked[rng.integers(0, n, n // 10)] = b"\n"
    return b" ".join(picked.tolist())[:size]


def _binary(rng: np.random.Generator, size: int) -> bytes:
    return rng.bytes(size)


@functools.lru_cache(maxsize=64)  # a log is rewritten every day: its older days, again
def _log_lines(seed: int, day: int, scale: float) -> bytes:
    rng = _rng(7, seed, day)
    size = int(LOG_DAY_BYTES * scale) + 200
    stamp = (START + dt.timedelta(days=day)).strftime("%Y-%m-%dT").encode()
    body = _text(rng, size).split(b"\n")
    return b"".join(
        b"%s%02d:%02d:%02dZ web1 app[%d]: %s\n"
        % (stamp, (k // 3600) % 24, (k // 60) % 60, k % 60, 1000 + seed, line.strip())
        for k, line in enumerate(body)
    )


@dataclass(frozen=True)
class Spec:
    """One file of a day's tree: how to make its bytes. Equal specs, equal bytes."""

    kind: str  # text | binary | log | image | dump
    size: int
    seed: int
    # text: (offset, seed) of each paragraph rewritten; image: (block, count) rewritten
    edits: tuple[tuple[int, int], ...] = ()
    days: tuple[int, ...] = ()  # log: the days whose lines it holds
    version: int = 0  # dump: the day it was written


@dataclass
class DayStats:
    written_files: int = 0
    written_bytes: int = 0
    deleted_files: int = 0
    total_files: int = 0
    total_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _rows(ids: list[int], rng: np.random.Generator, day: int) -> list[bytes]:
    """The rows ``ids`` of the orders table, written on ``day``."""
    n = len(ids)
    cust = rng.integers(1, 50_000, n).tolist()
    amount = rng.integers(100, 1_000_000, n).tolist()
    status = rng.integers(0, 4, n).tolist()
    secs = rng.integers(0, 86_400, n).tolist()
    nwords = rng.integers(2, 9, n).tolist()
    words = rng.integers(0, len(_WORDS), sum(nwords)).tolist()
    date = (START + dt.timedelta(days=day)).strftime("%Y-%m-%d").encode()
    out, w = [], 0
    for i in range(n):
        note = b" ".join([_WORDS[k] for k in words[w : w + nwords[i]]])
        w += nwords[i]
        t = secs[i]
        out.append(
            b"(%d,%d,'%s',%d.%02d,'%s','%s %02d:%02d:%02d')"
            % (ids[i], cust[i], _STATUS[status[i]], amount[i] // 100, amount[i] % 100, note,
               date, t // 3600, t // 60 % 60, t % 60)
        )
    return out


@dataclass
class Dump:
    """The database dump: rows of one orders table, in id order."""

    rows: list[bytes] = field(default_factory=list)
    next_id: int = 1

    def add(self, n: int, rng: np.random.Generator, day: int) -> None:
        self.rows += _rows(list(range(self.next_id, self.next_id + n)), rng, day)
        self.next_id += n

    def update(self, at: int, n: int, rng: np.random.Generator, day: int) -> None:
        """Rows ``at``.. ``at + n - 1`` (list positions) rewritten, ids kept."""
        old = self.rows[at : at + n]
        self.rows[at : at + n] = _rows([int(r[1 : r.index(b",")]) for r in old], rng, day)

    def render(self) -> bytes:
        head = (
            b"-- MySQL dump 10.13  Distrib 8.0\n--\n-- Table structure for table `orders`\n"
            b"CREATE TABLE `orders` (`id` int NOT NULL, `customer` int, `status` "
            b"varchar(16), `amount` decimal(10,2), `note` text, `created` datetime, "
            b"PRIMARY KEY (`id`));\n"
        )
        lines = [
            b"INSERT INTO `orders` VALUES " + b",".join(self.rows[i : i + ROWS_PER_INSERT]) + b";\n"
            for i in range(0, len(self.rows), ROWS_PER_INSERT)
        ]
        return head + b"".join(lines) + b"-- Dump completed\n"


class DailyCorpus:
    """The tree's state on ``self.day`` (-1 before the first ``advance``)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.day = -1
        self.files: dict[str, Spec] = {}
        self.dump = Dump()
        self.since: dict[str, int] = {}  # the day each file last changed: its mtime
        self._written: dict[str, Spec] = {}  # what write() last put in its root

    @staticmethod
    def when(day: int) -> int:
        """The save time of ``day`` (epoch seconds): 03:00 UTC, nightly."""
        return int((START + dt.timedelta(days=day)).timestamp())

    @staticmethod
    def day_of(when: int) -> int | None:
        day, rest = divmod(when - DailyCorpus.when(0), 86_400)
        return int(day) if rest == 0 else None

    def advance(self) -> None:
        before = dict(self.files)
        self.day += 1
        if self.day == 0:
            self._create()
        else:
            self._mutate(self.day)
        for name, spec in self.files.items():
            if before.get(name) != spec:
                self.since[name] = self.day

    # -- day 0

    def _create(self) -> None:
        s = self.scale
        rng = _rng(1)
        n = _scaled(TREE_FILES, s, 20)
        sizes = rng.lognormal(0.0, 1.2, n)
        sizes = np.maximum(64, sizes / sizes.sum() * TREE_BYTES * s).astype(int)
        dirs = [f"srv/{a}/{b}" for a in ("app", "conf", "share", "www") for b in ("x", "y", "z")]
        for i, size in enumerate(sizes):
            kind = "text" if rng.random() < 0.7 else "binary"
            name = f"{dirs[i % len(dirs)]}/f{i:04d}.{'txt' if kind == 'text' else 'bin'}"
            self.files[name] = Spec(kind, int(size), 1000 + i)
        self.files["srv/archive.tar"] = Spec("binary", int(ARCHIVE_BYTES * s), 2)
        self.files["vm/disk.img"] = Spec("image", int(IMAGE_BYTES * s) // BLOCK * BLOCK, 3)
        for i in range(LOGS):
            self.files[f"log/app{i}.log"] = Spec("log", 0, 4000 + i, days=(0,))
        self.dump.add(int(DUMP_BYTES * s) // 110 + 1, _rng(2), 0)
        self.files["db/app.sql"] = Spec("dump", 0, 5, version=0)
        self._uploads(0)

    # -- every later day

    def _mutate(self, day: int) -> None:
        s = self.scale
        rng = _rng(3, day)
        tree = sorted(k for k, v in self.files.items() if k.startswith("srv/") and v.kind == "text")
        for name in rng.choice(tree, size=min(len(tree), _scaled(EDITS_PER_DAY, s)), replace=False):
            spec = self.files[name]
            offset = int(rng.integers(0, max(1, spec.size)))
            self.files[name] = replace(spec, edits=(*spec.edits, (offset, day)))
        if rng.random() < 0.5 * min(1.0, s):  # one file in ten of srv/ gone by day 60
            victims = sorted(k for k in self.files if k.startswith("srv/") and k != "srv/archive.tar")
            del self.files[victims[int(rng.integers(0, len(victims)))]]
        self._patch_image(rng, day)
        self._dump_day(rng, day)
        self._logs(day)
        self._uploads(day)

    def _patch_image(self, rng: np.random.Generator, day: int) -> None:
        spec = self.files["vm/disk.img"]
        blocks = spec.size // BLOCK
        per_place = max(1, blocks // 200 // 6)
        edits = tuple((int(rng.integers(0, max(1, blocks - per_place))), per_place) for _ in range(6))
        # (block, count) pairs, applied in order over the base
        self.files["vm/disk.img"] = replace(spec, edits=(*spec.edits, *edits), version=day)

    def _dump_day(self, rng: np.random.Generator, day: int) -> None:
        s, rows = self.scale, len(self.dump.rows)
        hot = max(1, rows // 20)
        for _ in range(_scaled(24, s)):  # recent orders change status
            self.dump.update(rows - int(rng.integers(1, hot + 1)), 20, rng, day)
        for _ in range(_scaled(6, s)):  # and a few old ones
            self.dump.update(int(rng.integers(0, rows)), 20, rng, day)
        at = int(rng.integers(0, rows // 2))
        del self.dump.rows[at : at + _scaled(100, s)]
        self.dump.add(_scaled(1500, s), rng, day)
        self.files["db/app.sql"] = replace(self.files["db/app.sql"], version=day)

    def _logs(self, day: int) -> None:
        for i in range(LOGS):
            name = f"log/app{i}.log"
            spec = self.files[name]
            if day % ROTATE_DAYS == 0:
                self.files[name + ".1"] = spec
                self.files[name] = replace(spec, days=(day,))
            else:
                self.files[name] = replace(spec, days=(*spec.days, day))

    def _uploads(self, day: int) -> None:
        rng = _rng(4, day)
        for i in range(_scaled(UPLOADS_PER_DAY, self.scale)):
            size = int(rng.lognormal(0.0, 0.8) * UPLOAD_BYTES * self.scale) + 100
            kind = "binary" if rng.random() < 0.6 else "text"
            self.files[f"uploads/{day:03d}/u{i:02d}"] = Spec(kind, size, 100_000 * (day + 1) + i)
        gone = f"uploads/{day - UPLOAD_DAYS:03d}/"
        for name in [k for k in self.files if k.startswith(gone)]:
            del self.files[name]

    # -- bytes

    def _bytes(self, spec: Spec) -> bytes:
        if spec.kind == "dump":
            return self.dump.render()
        if spec.kind == "log":
            return b"".join(_log_lines(spec.seed, d, self.scale) for d in spec.days)
        if spec.kind == "image":
            return self._image(spec)
        make = _text if spec.kind == "text" else _binary
        data = make(_rng(5, spec.seed), spec.size)
        for offset, seed in spec.edits:  # a paragraph rewritten, the size kept or not
            para = _text(_rng(6, spec.seed, seed), 2000)
            data = data[:offset] + para + data[offset + 1500 :]
        return data

    def _image(self, spec: Spec) -> bytes:
        blocks = spec.size // BLOCK
        rng = _rng(8, spec.seed)
        kinds = rng.choice(3, size=blocks, p=[0.4, 0.3, 0.3])
        out = bytearray(rng.bytes(spec.size))
        view = np.frombuffer(out, dtype=np.uint8).reshape(blocks, BLOCK)
        view[kinds == 1] = 0
        view[kinds == 2] &= 0x0F
        for n, (block, count) in enumerate(spec.edits):
            out[block * BLOCK : (block + count) * BLOCK] = _rng(9, spec.seed, n).bytes(count * BLOCK)
        return bytes(out)

    def write(self, root: Path) -> DayStats:
        """Make ``root`` hold this day's tree: write what changed since the last
        ``write`` into ``root``, delete what is gone. The same tree, times
        included, whichever days were written before."""
        stats = DayStats()
        when = self.when(self.day)  # of the directories; a file's is that of its last change
        for name in sorted(set(self._written) - set(self.files)):
            (root / name).unlink()
            stats.deleted_files += 1
            del self._written[name]
        for name, spec in sorted(self.files.items()):
            path = root / name
            if self._written.get(name) != spec or not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                data = self._bytes(spec)
                path.write_bytes(data)
                changed = self.when(self.since[name])
                os.utime(path, (changed, changed))
                self._written[name] = spec
                stats.written_files += 1
                stats.written_bytes += len(data)
        for dirpath, _, _ in os.walk(root, topdown=False):
            if Path(dirpath) != root and not os.listdir(dirpath):
                os.rmdir(dirpath)
            else:  # the same times in a replay: a restore compares equal
                os.utime(dirpath, (when, when))
        stats.total_files = len(self.files)
        stats.total_bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        return stats
