"""`ketch mirror verify`: check a mirror against its manifests.

Always: every pack, idx and parity file a manifest names is in the store with the size the
manifest records, and with its sha256 where the store reports one (S3 records
it with each upload); files under a repository's pack directory that no
manifest names are reported as extra (a push interrupted before its manifest,
or a gc'd pack a push has not removed yet).

With `read_data_percent`, that share of each repository's packs (at least one
when the percentage is above zero) is downloaded end to end with its idx: the
sha256s against the manifest, the idx's own SHA-1, the pack's trailing SHA-1
and name, then every entry's CRC32 against the idx and every object decoded
and hashed against its id.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ketch.errors import EXIT_FAILED, EXIT_OK, EXIT_WARNINGS, CorruptObject, KetchError
from ketch.integrity.packcheck import check_pack
from ketch.offsite.locator import is_locator
from ketch.offsite.manifest import (
    FileEntry,
    PackEntry,
    list_repositories,
    load_manifest,
    no_repositories,
    pack_key,
    pack_prefix,
)
from ketch.offsite.pull import download
from ketch.offsite.store import NotFound, ObjectStore
from ketch.progress import NullProgress, Progress


@dataclass
class RepoVerifyReport:
    name: str
    files_checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)  # "key: what is wrong"
    extra: list[str] = field(default_factory=list)
    packs_read: int = 0
    bytes_read: int = 0
    objects_checked: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupted and self.error is None


@dataclass
class VerifyReport:
    repos: list[RepoVerifyReport] = field(default_factory=list)
    read_data_percent: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.repos)

    @property
    def has_extra(self) -> bool:
        return any(r.extra for r in self.repos)

    @property
    def exit_code(self) -> int:
        """2 when something is missing or damaged, 1 for extra files only."""
        return EXIT_OK if self.ok and not self.has_extra else (
            EXIT_WARNINGS if self.ok else EXIT_FAILED)

    def text(self) -> str:
        lines = []
        for r in self.repos:
            if r.error is not None:
                lines.append(f"{r.name}: FAILED: {r.error}")
                continue
            read = (f", {r.packs_read} packs read ({r.bytes_read / 1e6:,.1f} MB, "
                    f"{r.objects_checked} objects)" if r.packs_read else "")
            lines.append(f"{r.name}: {'ok' if r.ok else 'DAMAGED'}: {r.files_checked} files "
                         f"checked{read}")
            lines += [f"  missing: {k}" for k in r.missing]
            lines += [f"  corrupted: {k}" for k in r.corrupted]
            lines += [f"  extra: {k}" for k in r.extra]
        bad = sum(not r.ok for r in self.repos)
        lines.append(f"{len(self.repos) - bad} of {len(self.repos)} repositories intact "
                     f"({self.seconds:.1f}s)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "read_data_percent": self.read_data_percent,
                "seconds": round(self.seconds, 3),
                "repositories": [{**asdict(r), "ok": r.ok} for r in self.repos]}


def verify(store: ObjectStore, repos: list[str] | None, *, read_data_percent: float = 0,
           progress: Progress | None = None, rng: random.Random | None = None) -> VerifyReport:
    """Check the named repositories (None: every one with a manifest)."""
    if not 0 <= read_data_percent <= 100:
        raise KetchError(f"--read-data takes a percentage from 0 to 100, "
                         f"not {read_data_percent:g}")
    progress = progress or NullProgress()
    rng = rng or random.SystemRandom()
    t0 = time.monotonic()
    report = VerifyReport(read_data_percent=read_data_percent)
    if repos is None:
        repos = list_repositories(store)
        if not repos:
            raise no_repositories(store)
    for name in repos:
        rep = RepoVerifyReport(name=name)
        report.repos.append(rep)
        try:
            _verify_one(store, rep, read_data_percent, progress, rng)
        except KetchError as e:
            rep.error = str(e)
    progress.finish()
    report.seconds = time.monotonic() - t0
    return report


def _verify_one(store: ObjectStore, rep: RepoVerifyReport, percent: float,
                progress: Progress, rng: random.Random) -> None:
    m = load_manifest(store, rep.name)
    listed = dict(store.list(pack_prefix(rep.name)))
    named = set()
    intact: list[PackEntry] = []

    def check(f: FileEntry) -> bool:
        key = pack_key(rep.name, f.name)
        named.add(key)
        rep.files_checked += 1
        if key not in listed:
            rep.missing.append(key)
            return False
        st = store.stat(key)
        size = st.size if st is not None else listed[key]
        if size != f.size:
            rep.corrupted.append(f"{key}: {size} bytes, the manifest says {f.size}")
            return False
        if st is not None and st.checksum is not None and st.checksum != f.sha256:
            rep.corrupted.append(f"{key}: sha256 {st.checksum} differs from the manifest's")
            return False
        return True

    for p in m.packs:
        if all([check(f) for f in p.files()]):
            intact.append(p)
    if m.locator is not None:
        check(m.locator)
    # Locators a writer replaced and its key could not delete: gc deletes them.
    rep.extra = sorted(k for k in listed if k not in named
                       and not is_locator(k.rsplit("/", 1)[-1]))
    if percent <= 0 or not m.packs:
        return
    want = min(len(m.packs), max(1, math.ceil(len(m.packs) * percent / 100)))
    # Damaged packs are already reported; the sample reads packs that look fine.
    sample = rng.sample(intact, min(want, len(intact)))
    with tempfile.TemporaryDirectory(prefix="ketch-verify-") as tmp:
        for p in sorted(sample, key=lambda p: p.pack.name):
            problem = _read_pack(store, rep, p, tmp, progress)
            if problem is not None:
                rep.corrupted.append(problem)


def _read_pack(store: ObjectStore, rep: RepoVerifyReport, p: PackEntry, tmp: str,
               progress: Progress) -> str | None:
    """Download one pack and its idx and check them through; a problem, or None."""
    paths = []
    for f in p.files():
        key = pack_key(rep.name, f.name)
        path = os.path.join(tmp, f.name)
        paths.append(path)
        try:
            with open(path, "wb") as out:
                download(store, key, out, f, lambda n: progress.advance(n))
        except NotFound:
            return f"{key}: vanished while verifying"
        except CorruptObject as e:
            return str(e)
        rep.bytes_read += f.size
    rep.packs_read += 1
    key = pack_key(rep.name, p.pack.name)
    try:
        got = check_pack(paths[0], paths[1], p.stem[len("pack-"):], read_data=True)
    finally:
        for path in paths:
            os.unlink(path)
    rep.objects_checked += got.objects_read
    return None if got.ok else f"{key}: {got.summary()}"


def fsck_report(store: ObjectStore, name: str, options: dict[str, Any], *,
                where: str) -> dict[str, Any]:
    """`ketch fsck -r s3://...`: this check of one repository, in fsck's report
    shape (integrity.fsck.FsckReport.as_dict)."""
    if options.get("generate") or options.get("repair"):
        raise KetchError("an S3 mirror is read-only: run fsck -g or --repair where the "
                         "repository is, then push it again")
    percent = 0.0 if options.get("quick") else float(options.get("read_data") or 0.0)
    got = verify(store, [name], read_data_percent=percent)
    r = got.repos[0]
    problems: list[dict[str, Any]] = []
    if r.error is not None:
        problems.append({"severity": "damaged", "what": "repository", "message": r.error})
    problems += [{"severity": "damaged", "what": "missing", "file": k,
                  "message": f"{k}: missing"} for k in r.missing]
    problems += [{"severity": "damaged", "what": "pack", "message": c} for c in r.corrupted]
    problems += [{"severity": "warning", "what": "extra", "file": k,
                  "message": f"{k}: no manifest names it (an interrupted push?)"}
                 for k in r.extra]
    code = got.exit_code
    return {"repository": where, "quick": bool(options.get("quick")),
            "read_data_percent": percent, "packs": r.files_checked // 2,
            "packs_read": r.packs_read, "objects": r.objects_checked,
            "objects_read": r.objects_checked, "objects_reachable": 0, "refs": 0,
            "bytes_read": r.bytes_read, "seconds": round(got.seconds, 3),
            "problems": problems, "repairs": [], "parity_generated": 0,
            "exit_code": code, "ok": code == EXIT_OK}
