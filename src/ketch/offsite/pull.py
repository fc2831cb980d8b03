"""`ketch mirror pull`: rebuild repositories from a mirror.

Each repository becomes `DEST/REPO`, a bare repository git and bup accept:
config and HEAD from the manifest, every pack (idx after its pack, so nothing
reads a half-written one), each download checked against the manifest's size
and sha256 before it is renamed into place, and the refs last.

A pull that was interrupted leaves `DEST/REPO/ketch-pull.incomplete`; running
it again skips the packs already in place. A destination without that marker
that is not empty is refused rather than overwritten.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from ketch.errors import EXIT_FAILED, EXIT_OK, CorruptObject, KetchError
from ketch.git.durable import AtomicFile
from ketch.git.refs import Refs
from ketch.localrepo import LocalRepository, init_repository
from ketch.offsite.manifest import (
    FileEntry,
    ManifestError,
    list_repositories,
    load_manifest,
    manifest_key,
    no_repositories,
    pack_key,
)
from ketch.offsite.store import Advance, NotFound, ObjectStore
from ketch.progress import NullProgress, Progress

MARKER = "ketch-pull.incomplete"
_BLOCK = 8 << 20  # bytes per ranged GET while downloading


@dataclass
class RepoPullReport:
    name: str
    path: str
    files: int = 0
    bytes: int = 0
    skipped_files: int = 0
    refs: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class PullReport:
    repos: list[RepoPullReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[RepoPullReport]:
        return [r for r in self.repos if r.error is not None]

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK

    def text(self) -> str:
        lines = [f"{r.name}: FAILED: {r.error}" if r.error is not None else
                 f"{r.name}: {r.files} files ({r.bytes / 1e6:,.1f} MB) downloaded, "
                 f"{r.skipped_files} already there, {r.refs} refs -> {r.path}"
                 for r in self.repos]
        lines.append(f"{len(self.repos) - len(self.failed)} of {len(self.repos)} repositories "
                     f"pulled in {self.seconds:.1f}s")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3), "failed": len(self.failed),
                "files": sum(r.files for r in self.repos),
                "bytes": sum(r.bytes for r in self.repos),
                "repositories": [asdict(r) for r in self.repos]}


def download(store: ObjectStore, key: str, out: BinaryIO, entry: FileEntry,
             advance: Advance | None = None) -> None:
    """Copy a value to `out` in ranged GETs; CorruptObject unless it matches `entry`."""
    st = store.stat(key)
    if st is None:
        raise NotFound(f"{key}: missing from the store")
    if st.size != entry.size:
        raise CorruptObject(f"{key}: the store holds {st.size} bytes, the manifest says "
                            f"{entry.size}")
    h = hashlib.sha256()
    pos = 0
    while pos < entry.size:
        block = store.get(key, pos, min(pos + _BLOCK, entry.size))
        if not block:
            raise CorruptObject(f"{key}: ends at {pos} bytes, the manifest says {entry.size}")
        out.write(block)
        h.update(block)
        pos += len(block)
        if advance is not None:
            advance(len(block))
    if h.hexdigest() != entry.sha256:
        raise CorruptObject(f"{key}: sha256 {h.hexdigest()} does not match the manifest")


# What a pulled repository's config may set: what ketch, bup and git write in a
# backup repository. Other keys (core.pager, core.fsmonitor, include.path,
# alias.*...) can make a later git command there run a program of the
# manifest's choosing.
_CONFIG_SECTIONS = ("pack.", "bup.", "ketch.", "gc.", "repack.", "index.", "extensions.")
_CORE_KEYS = frozenset(f"core.{k}" for k in (
    "repositoryformatversion", "filemode", "bare", "logallrefupdates", "compression",
    "loosecompression", "bigfilethreshold", "ignorecase", "precomposeunicode", "symlinks",
    "sharedrepository", "packedgitlimit", "packedgitwindowsize", "deltabasecachelimit"))


def check_config(text: str, where: str) -> None:
    """Refuse a manifest's config that sets a key outside the list above, as git
    itself reads the text (includes not followed: include.path is refused)."""
    with tempfile.NamedTemporaryFile("w", prefix="ketch-pull-config.") as f:
        f.write(text)
        f.flush()
        res = subprocess.run(["git", "config", "--file", f.name, "--no-includes", "--list",
                              "--name-only", "-z"], capture_output=True)
    if res.returncode:
        raise ManifestError(f"{where}: the config is not one git reads")
    for raw in res.stdout.split(b"\0"):
        name = raw.decode(errors="replace")
        if name and name.lower() not in _CORE_KEYS and not name.lower().startswith(
                _CONFIG_SECTIONS):
            raise ManifestError(f"{where}: the config sets {name[:80]}, which a pull does not "
                                "write (it could run a program)")


def pull(store: ObjectStore, names: list[str] | None, dest_dir: str, *,
         progress: Progress | None = None) -> PullReport:
    """Rebuild the named repositories (None: every one in the store) under dest_dir."""
    progress = progress or NullProgress()
    t0 = time.monotonic()
    report = PullReport()
    if names is None:
        names = list_repositories(store)
        if not names:
            raise no_repositories(store)
    manifests = []
    for name in names:
        rep = RepoPullReport(name=name, path=os.path.join(os.path.abspath(dest_dir), name))
        report.repos.append(rep)
        try:
            manifests.append((rep, load_manifest(store, name)))
        except KetchError as e:
            rep.error = str(e)
    progress.start(sum(f.size for _, m in manifests for p in m.packs for f in p.files()))
    for rep, m in manifests:
        t = time.monotonic()
        try:
            _pull_one(store, m.repository, rep, progress)
        except (KetchError, OSError) as e:
            rep.error = str(e) if isinstance(e, KetchError) else f"{e.filename}: {e.strerror}"
        rep.seconds = time.monotonic() - t
    progress.finish()
    report.seconds = time.monotonic() - t0
    return report


def _pull_one(store: ObjectStore, name: str, rep: RepoPullReport, progress: Progress) -> None:
    m = load_manifest(store, name)
    check_config(m.config, manifest_key(name))
    target = rep.path
    marker = os.path.join(target, MARKER)
    if os.path.exists(target) and not os.path.exists(marker) and os.listdir(target):
        raise KetchError(f"{target}: already exists and is not empty; pull into a new directory")
    os.makedirs(target, exist_ok=True)
    with open(marker, "w") as f:
        f.write("an interrupted 'ketch mirror pull'; run it again to finish\n")
    init_repository(target)
    for fn, text in (("config", m.config), ("HEAD", m.head + "\n")):
        with AtomicFile(os.path.join(target, fn)) as af:
            af.file.write(text.encode())
    pack_dir = os.path.join(target, "objects", "pack")
    for p in m.packs:
        for entry in p.files():  # the pack, then its idx, then its parity
            path = os.path.join(pack_dir, entry.name)
            if os.path.exists(path) and os.path.getsize(path) == entry.size:
                rep.skipped_files += 1  # renamed into place only once it matched
                progress.advance(entry.size, 1)
                continue
            with AtomicFile(path) as af:
                download(store, pack_key(name, entry.name), af.file, entry,
                         lambda n: progress.advance(n))
            progress.advance(0, 1)
            rep.files += 1
            rep.bytes += entry.size
    refs = Refs(target)
    for ref, hexid in sorted(m.refs.items()):
        bname, oid = ref.encode("utf-8", "surrogateescape"), bytes.fromhex(hexid)
        old = refs.read(bname)
        if old != oid:
            refs.update(bname, oid, old, message=b"ketch mirror pull")
        rep.refs += 1
    repo = LocalRepository(target)
    try:
        repo.maintain()  # bup's midx and bloom, as after a save
    finally:
        repo.close()
    os.unlink(marker)
