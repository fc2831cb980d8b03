"""`ketch fsck` on a local repository: packs, caches, refs and the object graph.

1. Every pack with its idx (integrity.packcheck), two at a time: hashing and
   inflating release the GIL. With `read_data` (a percentage of the packs,
   chosen at random) objects are inflated and hashed too.
2. With `repair`, a damaged pack that has parity is repaired by par2 and
   checked again; with `generate`, every intact pack without parity gets it.
3. The midx and bloom files against the idx files (warnings: caches).
4. Unless `quick`, the walk from every ref (integrity.reach) and, when it found
   trouble, the naming walk (integrity.names): each bad object once, with the
   first save and path that need it. With `quick` only the refs' tips are
   looked up.

Exit codes: 0 clean, 1 warnings only (a stale cache), 2 damage.
"""

from __future__ import annotations

import glob
import math
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ketch.errors import EXIT_FAILED, EXIT_OK, EXIT_WARNINGS, CorruptObject, UsageError
from ketch.git.idx import PackIndex
from ketch.git.loose import loose_exists
from ketch.integrity import parity
from ketch.integrity.indexcheck import CacheProblem, check_caches
from ketch.integrity.names import Finding, Namer, ref_label
from ketch.integrity.packcheck import PackCheck, check_pack
from ketch.integrity.reach import Reach
from ketch.lifecycle.gcreport import GcProgress, NullGcProgress
from ketch.lifecycle.liveset import LiveSet
from ketch.localrepo import LocalRepository
from ketch.text import plural

_WORKERS = 2
CACHE_ADVICE = "harmless: ketch ignores it; fsck --repair rebuilds it"


@dataclass
class FsckReport:
    repository: str
    quick: bool = False
    read_data_percent: float = 0.0
    packs: int = 0
    packs_read: int = 0  # inflated and hashed
    objects: int = 0
    objects_read: int = 0
    objects_reachable: int = 0
    refs: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    problems: list[dict[str, Any]] = field(default_factory=list)
    repairs: list[dict[str, Any]] = field(default_factory=list)
    parity_generated: int = 0

    @property
    def exit_code(self) -> int:
        if any(p["severity"] == "damaged" for p in self.problems):
            return EXIT_FAILED
        return EXIT_WARNINGS if self.problems else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        d["ok"] = self.exit_code == EXIT_OK
        d["seconds"] = round(self.seconds, 3)
        return d


def _damaged(what: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"severity": "damaged", "what": what, "message": message, **extra}


class FsckRun:
    """The check as a job (repo.FsckJob): run here on a local repository, or
    sent as `options` to a server, which builds the same job there."""

    def __init__(self, *, quick: bool = False, read_data: float = 0.0, generate: bool = False,
                 repair: bool = False, progress: GcProgress | None = None,
                 rng: random.Random | None = None) -> None:
        if not 0 <= read_data <= 100:
            raise UsageError(f"--read-data takes a percentage from 0 to 100, not {read_data:g}")
        if quick and read_data:
            raise UsageError("--quick reads no data: give --quick or --read-data, not both")
        self.options: dict[str, Any] = {"quick": quick, "read_data": read_data,
                                        "generate": generate, "repair": repair}
        self.progress = progress
        self.rng = rng

    @property
    def writes(self) -> bool:
        return bool(self.options["generate"] or self.options["repair"])

    @classmethod
    def from_options(cls, options: dict[str, Any],
                     progress: GcProgress | None = None) -> FsckRun:
        try:
            return cls(quick=bool(options.get("quick", False)),
                       read_data=float(options.get("read_data", 0.0)),
                       generate=bool(options.get("generate", False)),
                       repair=bool(options.get("repair", False)), progress=progress)
        except (TypeError, ValueError):
            raise UsageError("bad fsck options") from None

    def run(self, repo: LocalRepository) -> dict[str, Any]:
        o = self.options
        return check_repository(repo, quick=o["quick"], read_data=o["read_data"],
                                generate=o["generate"], repair=o["repair"],
                                progress=self.progress, rng=self.rng).as_dict()


def check_repository(repo: LocalRepository, *, quick: bool = False, read_data: float = 0.0,
                     generate: bool = False, repair: bool = False,
                     progress: GcProgress | None = None,
                     rng: random.Random | None = None) -> FsckReport:
    if (generate or repair) and not parity.available():
        raise parity.ParityError("par2 is not installed (Debian: apt-get install par2); "
                                 "-g and --repair need it")
    progress = progress or NullGcProgress()
    rng = rng or random.SystemRandom()
    t0 = time.monotonic()
    rep = FsckReport(repo.path, quick=quick, read_data_percent=read_data)
    # Refs first: a save writes its packs before it moves its branch, so the
    # packs listed next hold everything these refs reach, even if saves run.
    refs = sorted(repo.iter_refs())
    stems = _pack_stems(repo.pack_dir)
    rep.packs = len(stems)
    want = 0 if read_data <= 0 else min(len(stems), max(1, math.ceil(len(stems) * read_data / 100)))
    sample = set(rng.sample(sorted(stems), want))
    checks = _check_packs(stems, sample, quick, progress)
    if repair:
        _repair(rep, checks, progress)
    if generate:
        for stem, c in sorted(checks.items()):
            if c.ok and not parity.has_parity(stem + ".pack"):
                parity.generate(stem + ".pack")
                rep.parity_generated += 1
    for c in checks.values():
        rep.objects += c.objects
        rep.objects_read += c.objects_read
        rep.bytes_read += c.bytes_read
        rep.packs_read += c.objects_read > 0
    _graph(repo, rep, refs, checks, quick, repair, progress)
    progress.finish()
    rep.seconds = time.monotonic() - t0
    return rep


def _pack_stems(pack_dir: str) -> list[str]:
    found = {p[: -len(ext)] for ext in (".pack", ".idx")
             for p in glob.glob(os.path.join(glob.escape(pack_dir), "pack-*" + ext))}
    return sorted(found)


def _check_packs(stems: list[str], sample: set[str], quick: bool,
                 progress: GcProgress) -> dict[str, PackCheck]:
    sizes = {s: os.path.getsize(s + ".pack") if os.path.exists(s + ".pack") else 0
             for s in stems}
    progress.phase("checking packs", None if quick else sum(sizes.values()))
    done = [0] * len(stems)
    lock = threading.Lock()

    def one(i: int, stem: str) -> PackCheck:
        def seen(n: int) -> None:
            with lock:
                done[i] += n

        return check_pack(stem + ".pack", stem + ".idx", quick=quick,
                          read_data=stem in sample, on_bytes=seen)

    out: dict[str, PackCheck] = {}
    with ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="ketch-fsck") as pool:
        futures: dict[str, Future[PackCheck]] = {
            s: pool.submit(one, i, s) for i, s in enumerate(stems)}
        shown = 0
        while futures:
            for s in [s for s, f in futures.items() if f.done()]:
                out[s] = futures.pop(s).result()
            with lock:
                now = sum(done)
            progress.advance(now - shown, 0)
            shown = now
            if futures:
                wait(futures.values(), timeout=0.2, return_when=FIRST_COMPLETED)
    return out


def _repair(rep: FsckReport, checks: dict[str, PackCheck], progress: GcProgress) -> None:
    progress.phase("repairing packs")
    for stem, c in sorted(checks.items()):
        if c.ok:
            continue
        pack = stem + ".pack"
        name = os.path.basename(pack)
        if not parity.has_parity(pack):
            rep.repairs.append({"pack": name, "result": "unrepairable",
                                "message": f"{name}: no parity (ketch fsck -g makes it)"})
            continue
        parity.repair(pack)
        again = check_pack(pack, stem + ".idx", read_data=True)
        if again.ok:
            checks[stem] = again
            rep.repairs.append({"pack": name, "result": "repaired",
                                "message": f"{name}: repaired from its parity"})
        else:
            rep.repairs.append({"pack": name, "result": "unrepairable",
                                "message": f"{name}: parity could not repair it"})


def _pack_problems(rep: FsckReport, c: PackCheck) -> None:
    for p in c.problems:
        rep.problems.append(_damaged("pack", p, pack=c.name))
    if not c.damaged:
        return
    first = c.damaged[0]
    offsets = ", ".join(f"{d.offset}" for d in c.damaged[:5]) + (
        ", …" if len(c.damaged) > 5 else "")
    why = first.what if all(d.what == first.what for d in c.damaged) else (
        f"the first {first.what}")
    msg = (f"{c.name}: {plural(len(c.damaged), 'damaged entry', 'damaged entries')} "
           f"at offset {offsets} ({why})")
    rep.problems.append(_damaged("pack", msg, pack=c.name,
                                 offsets=[d.offset for d in c.damaged]))


def _graph(repo: LocalRepository, rep: FsckReport, refs: list[tuple[bytes, bytes]],
           checks: dict[str, PackCheck], quick: bool, repair: bool,
           progress: GcProgress) -> None:
    usable = [s for s, c in sorted(checks.items()) if os.path.exists(s + ".idx")
              and not any(p.startswith(os.path.basename(s) + ".idx is") for p in c.problems)]
    idx: dict[str, PackIndex] = {}
    try:
        for s in usable:
            try:
                idx[os.path.basename(s) + ".idx"] = PackIndex(s + ".idx")
            except CorruptObject:
                continue
        caches = check_caches(repo.pack_dir, idx, quick=quick)
    finally:
        for ix in idx.values():
            ix.close()
    if repair and caches:
        for cp in caches:
            os.unlink(os.path.join(repo.pack_dir, cp.file))
        repo.maintain()
        rep.repairs += [{"file": cp.file, "result": "rebuilt",
                         "message": f"{cp.file}: removed and rebuilt"} for cp in caches]
        caches = check_caches_again(repo, quick)
    bad_midx = {cp.file for cp in caches}
    midx = [m for m in sorted(glob.glob(os.path.join(glob.escape(repo.pack_dir), "*.midx")))
            if os.path.basename(m) not in bad_midx]
    live = LiveSet([s + ".idx" for s in usable if os.path.basename(s) + ".idx" in idx], midx)
    try:
        _walk(repo, rep, refs, checks, live, quick, progress)
    finally:
        live.close()
    for cp in caches:
        rep.problems.append({"severity": "warning", "what": "cache", "file": cp.file,
                             "message": f"{cp.file}: {cp.what} ({CACHE_ADVICE})"})


def check_caches_again(repo: LocalRepository, quick: bool) -> list[CacheProblem]:
    idx = {}
    try:
        for p in glob.glob(os.path.join(glob.escape(repo.pack_dir), "*.idx")):
            try:
                idx[os.path.basename(p)] = PackIndex(p)
            except CorruptObject:
                continue
        return check_caches(repo.pack_dir, idx, quick=quick)
    finally:
        for ix in idx.values():
            ix.close()


def _walk(repo: LocalRepository, rep: FsckReport, refs: list[tuple[bytes, bytes]],
          checks: dict[str, PackCheck], live: LiveSet, quick: bool,
          progress: GcProgress) -> None:
    by_idx = {os.path.basename(s) + ".idx": c for s, c in checks.items()}
    bad = []
    notes: list[dict[bytes, str]] = []
    for ix in live.idx:
        c = by_idx[ix.name]
        b = np.zeros(ix.count, dtype=bool)
        note: dict[bytes, str] = {}
        if c.lost:
            b[:] = True
        elif c.damaged:
            ids = np.array([d.oid for d in c.damaged], dtype="S20")
            b[np.searchsorted(ix.ids, ids)] = True
            note = {d.oid: f"missing ({c.name} damaged at offset {d.offset})" for d in c.damaged}
        bad.append(b)
        notes.append(note)

    def damage_note(k: int, p: int) -> str:
        c = by_idx[live.idx[k].name]
        if c.lost:
            return f"missing ({c.name} is missing)"
        oid = bytes(live.idx[k].ids[p]).ljust(20, b"\0")
        return notes[k].get(oid, f"damaged ({c.name})")

    rep.refs = len(refs)
    if quick:
        for c in checks.values():
            _pack_problems(rep, c)
        for ref, tip in refs:
            which, pos = live.locate(np.array([tip], dtype="S20"))
            k, p = int(which[0]), int(pos[0])
            if k < 0 and not loose_exists(repo.objects_dir, tip):
                where = "missing"
            elif k >= 0 and bad[k][p]:
                where = damage_note(k, p)
            else:
                continue
            rep.problems.append(_damaged("ref", f"{ref_label(ref)}: points to commit "
                                         f"{tip.hex()[:12]}…, which is {where}",
                                         ref=ref.decode(errors="replace"), object=tip.hex()))
        return
    progress.phase("walking the saves")
    reach = Reach(repo.objects_dir, live, bad, damage_note,
                  on_objects=lambda n: progress.advance(0, n))
    try:
        reach.walk([tip for _, tip in refs])
        rep.objects_reachable = reach.found
        for c in checks.values():
            _pack_problems(rep, c)
        if reach.trouble:
            progress.phase("naming what is damaged")
            findings = Namer(reach.read, live, reach.trouble).name_all(refs)
            tips = {tip: ref for ref, tip in refs}
            for f in findings:
                rep.problems.append(_finding(f, tips))
    finally:
        reach.close()


def _finding(f: Finding, tips: dict[bytes, bytes]) -> dict[str, Any]:
    t = f.trouble
    short = t.oid.hex()[:12] + "…"
    others = f.saves - 1
    also = f" (and {plural(others, 'other save')})" if others > 0 else ""
    if f.save is not None and f.path is not None:
        msg = f"{f.ref}: {f.save}:{f.path}: {t.kind} {short} {t.where}{also}"
    elif t.oid in tips:
        msg = f"{ref_label(tips[t.oid])}: points to commit {short}, which is {t.where}"
    elif f.ref is not None:
        msg = (f"{f.ref}: {t.kind} {short} {t.where} (older saves of {f.ref} cannot be "
               "reached)")
    else:
        msg = f"{t.kind} {short} {t.where} (reachable from the refs)"
    return _damaged("object", msg, object=t.oid.hex(), kind=t.kind, ref=f.ref, save=f.save,
                    path=f.path, other_saves=max(others, 0))
