"""The per-repository manifest of a mirror, and where things live in the store.

Layout under the store's root (an S3 bucket and prefix, or a directory)::

    REPO/manifest.json                         this module's JSON, replaced whole
    REPO/objects/pack/pack-<sha1>.pack         the repository's packs, byte for byte
    REPO/objects/pack/pack-<sha1>.idx          their idx files (v2)
    REPO/objects/pack/pack-<sha1>[.vol*].par2  their parity, where they have it

Packs and idx files are immutable: the name is the pack's own SHA-1, so a key
that exists with the right size and checksum never needs uploading again. The
manifest is the only mutable key and is written last by a push, after every
pack and idx it names has been uploaded and verified, so a reader that starts
from the manifest never meets a ref whose objects are missing.

Manifest (JSON object, format version 1)::

    {"format": "ketch-mirror", "version": 1,
     "repository": "REPO", "generation": 7, "time": "2026-01-31T02:00:00Z",
     "head": "ref: refs/heads/master",
     "refs": {"refs/heads/host": "<40 hex>", ...},
     "config": "<text of REPO/config>",
     "packs": [{"name": "pack-<sha1>.pack", "size": N, "sha256": "<hex>", "mtime": T,
                "idx": {"name": "pack-<sha1>.idx", "size": N, "sha256": "<hex>"},
                "parity": [{"name": "pack-<sha1>.vol000+200.par2", "size": N,
                            "sha256": "<hex>"}, {"name": "pack-<sha1>.par2", ...}],
                "retired": T},
               ...],
     "primary": true,
     "locator": {"name": "locator-<hex>.kloc", "size": N, "sha256": "<hex>", "objects": N}}

`locator` (ketch.offsite.locator; name, size, sha256 and "objects", its count)
finds any object of the packs it covers in one lookup; left out where there is none.
`primary` marks a repository saved into directly (ketch.offsite.bucket);
`retired` a pack its gc took out of use (ketch.offsite.bucketgc). Both are
left out when false or 0, so a mirror's manifest is what it always was.

`parity` (bup's `fsck -g` files, see ketch.integrity.parity) is optional and
left out for a pack without parity, so a manifest of a repository without
parity is what it was before parity existed, and a reader that does not know
the key (an older ketch) reads the packs as before.

`generation` counts pushes that changed the manifest; a push refuses to write
when the generation moved under it (another push of the same repository).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ketch.errors import KetchError, UsageError
from ketch.git.refnames import check_ref_name
from ketch.offsite.store import NotFound, ObjectStore

FORMAT = "ketch-mirror"
VERSION = 1
MANIFEST_NAME = "manifest.json"
PACK_DIR = "objects/pack"

_PACK_RX = re.compile(r"pack-[0-9a-f]{40}\.pack\Z")
_LOCATOR_RX = re.compile(r"locator-[0-9a-f]{40}\.kloc\Z")
_PARITY_SUFFIX_RX = re.compile(r"(\.vol[0-9]{1,6}\+[0-9]{1,6})?\.par2\Z")
_HEX40 = re.compile(r"[0-9a-f]{40}\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_REPO_RX = re.compile(r"[A-Za-z0-9._+@=-][A-Za-z0-9._+@=~ -]*\Z")
_MAX_SIZE = 1 << 50  # 1 PiB: no pack or idx is bigger


class ManifestError(KetchError):
    """A manifest is missing, unreadable or inconsistent."""


def check_repo_name(name: str) -> str:
    """A repository name as a single safe key component (the directory's basename)."""
    if not _REPO_RX.match(name) or name in (".", "..") or len(name) > 200:
        raise UsageError(f"unsuitable repository name for a mirror: {name!r}")
    return name


def manifest_key(repo: str) -> str:
    return f"{repo}/{MANIFEST_NAME}"


def pack_prefix(repo: str) -> str:
    return f"{repo}/{PACK_DIR}/"


def pack_key(repo: str, filename: str) -> str:
    return f"{repo}/{PACK_DIR}/{filename}"


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class PackEntry:
    pack: FileEntry
    idx: FileEntry
    mtime: int = 0  # ns, of the local pack: readers search packs in time order
    parity: tuple[FileEntry, ...] = ()  # in parity_order
    # When gc took the pack out of use (ns; 0: in use). Still read, never
    # deduplicated against, deleted by a later gc (ketch.offsite.bucketgc).
    retired: int = 0

    @property
    def stem(self) -> str:
        return self.pack.name[: -len(".pack")]

    def files(self) -> tuple[FileEntry, ...]:
        """The pack, its idx, then its parity: the order a pull writes them in."""
        return self.pack, self.idx, *self.parity


def parity_order(entries: list[FileEntry]) -> tuple[FileEntry, ...]:
    """Recovery files first, the par2 index last, as `par2 create`'s set is made
    complete (a pull cut short leaves a set without its index: incomplete)."""
    return tuple(sorted(entries, key=lambda f: (".vol" not in f.name, f.name)))


@dataclass
class Manifest:
    repository: str
    generation: int = 0
    time: str = ""
    head: str = "ref: refs/heads/master"
    refs: dict[str, str] = field(default_factory=dict)
    config: str = ""
    packs: list[PackEntry] = field(default_factory=list)
    # A repository saved into directly (ketch.offsite.bucket), not a mirror a
    # push replaces: a push refuses it, and only a primary one takes saves.
    primary: bool = False
    # One file that finds any object of the packs it covers (ketch.offsite.locator),
    # and how many objects it covers; None where there is none.
    locator: FileEntry | None = None
    locator_objects: int = 0

    def pack_by_idx(self) -> dict[str, PackEntry]:
        return {p.idx.name: p for p in self.packs}

    def ref(self, name: bytes) -> bytes | None:
        """The id a ref (or HEAD, through its symbolic ref) names, if any."""
        if name == b"HEAD":
            if not self.head.startswith("ref: "):
                return bytes.fromhex(self.head)
            name = self.head[5:].strip().encode()
        value = self.refs.get(name.decode("utf-8", "surrogateescape"))
        return bytes.fromhex(value) if value else None

    def ref_items(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """(name, id) of the refs under `prefix`, sorted by name."""
        refs = sorted((n.encode("utf-8", "surrogateescape"), bytes.fromhex(v))
                      for n, v in self.refs.items())
        return [(n, v) for n, v in refs if n.startswith(prefix)]

    def file_names(self) -> set[str]:
        return {f.name for p in self.packs for f in p.files()} | (
            {self.locator.name} if self.locator else set())

    def same_content(self, other: Manifest | None) -> bool:
        """Equal except for generation and time: nothing to publish."""
        if other is None:
            return False
        return (self.repository, self.head, self.refs, self.config, self.locator, sorted(
            self.packs, key=lambda p: p.pack.name)) == (
            other.repository, other.head, other.refs, other.config, other.locator, sorted(
                other.packs, key=lambda p: p.pack.name))

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT, "version": VERSION, "repository": self.repository,
            "generation": self.generation, "time": self.time, "head": self.head,
            **({"primary": True} if self.primary else {}),
            **({"locator": {**self.locator.as_dict(), "objects": self.locator_objects}}
               if self.locator else {}),
            "refs": dict(sorted(self.refs.items())), "config": self.config,
            "packs": [
                {**p.pack.as_dict(), "mtime": p.mtime, "idx": p.idx.as_dict(),
                 **({"retired": p.retired} if p.retired else {}),
                 **({"parity": [f.as_dict() for f in p.parity]} if p.parity else {})}
                for p in sorted(self.packs, key=lambda p: p.pack.name)
            ],
        }
        return json.dumps(doc, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ManifestError(f"{where}: not a ketch mirror manifest")
            if doc.get("version") != VERSION:
                raise ManifestError(
                    f"{where}: manifest version {doc.get('version')!r} is not supported "
                    f"(this ketch reads version {VERSION})")
            refs = {str(k): str(v) for k, v in doc["refs"].items()}
            m = cls(repository=check_repo_name(str(doc["repository"])),
                    generation=int(doc["generation"]), time=str(doc["time"]),
                    head=str(doc["head"]), refs=refs, config=str(doc["config"]),
                    packs=[_pack_entry(p) for p in doc["packs"]],
                    primary=doc.get("primary") is True)
            if doc.get("locator") is not None:
                m.locator = _file_entry(doc["locator"])
                m.locator_objects = _size(doc["locator"]["objects"])
        except ManifestError:
            raise
        except RecursionError:
            raise ManifestError(f"{where}: malformed manifest (nested too deeply)") from None
        except (ValueError, KeyError, TypeError, AttributeError, UsageError, OverflowError) as e:
            said = " ".join(str(e).split())[:200]  # one line, whatever the store held
            raise ManifestError(f"{where}: malformed manifest ({type(e).__name__}: {said})"
                                ) from None
        m.check(where)
        return m

    def check(self, where: str) -> None:
        """Names a pull may write to disk must be harmless: no '..', no odd refs."""
        for name, hexid in self.refs.items():
            if not _good_ref(name) or not _HEX40.match(hexid):
                raise ManifestError(f"{where}: bad ref in manifest: {name!r} -> {hexid!r}")
        head = self.head
        if not (_HEX40.match(head) or (head.startswith("ref: ") and _good_ref(head[5:]))):
            raise ManifestError(f"{where}: bad HEAD in manifest: {head!r}")
        if self.locator is not None and not (
                _LOCATOR_RX.match(self.locator.name) and _HEX64.match(self.locator.sha256)):
            raise ManifestError(f"{where}: bad locator in manifest: {self.locator.name!r}")
        for p in self.packs:
            if not _PACK_RX.match(p.pack.name) or p.idx.name != p.stem + ".idx":
                raise ManifestError(f"{where}: bad pack name in manifest: {p.pack.name!r}")
            for f in p.parity:
                if not (f.name.startswith(p.stem + ".")
                        and _PARITY_SUFFIX_RX.fullmatch(f.name[len(p.stem):])):
                    raise ManifestError(f"{where}: bad parity file name in manifest: "
                                        f"{f.name!r}")
            for f in p.files():
                if f.size < 0 or not _HEX64.match(f.sha256):
                    raise ManifestError(f"{where}: bad size or sha256 for {f.name}")


def _good_ref(name: str) -> bool:
    """git's rules for a ref name (a pull makes it a file under refs/)."""
    try:
        check_ref_name(name.encode("utf-8", "surrogateescape"))
    except KetchError:
        return False
    return True


def _size(value: object) -> int:
    # A JSON number that is not a plain integer (1.5, 1e400, true) is no size; nor
    # is one beyond any disk.
    if type(value) is not int or not 0 <= value < _MAX_SIZE:
        raise ValueError(f"bad size {str(value)[:40]}")
    return value


def _file_entry(d: dict[str, Any]) -> FileEntry:
    return FileEntry(str(d["name"]), _size(d["size"]), str(d["sha256"]))


def _pack_entry(d: dict[str, Any]) -> PackEntry:
    parity = d.get("parity", [])
    if not isinstance(parity, list):
        raise TypeError("parity is not a list")
    return PackEntry(_file_entry(d), _file_entry(d["idx"]), int(d.get("mtime", 0)),
                     parity_order([_file_entry(f) for f in parity]), int(d.get("retired", 0)))


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_manifest(store: ObjectStore, repo: str) -> Manifest | None:
    """The repository's manifest, or None when the store has none for it."""
    raw = read_manifest_bytes(store, repo)
    return None if raw is None else parse_manifest(raw, repo)


def read_manifest_bytes(store: ObjectStore, repo: str) -> bytes | None:
    try:
        return store.get(manifest_key(repo))
    except NotFound:
        return None


def parse_manifest(raw: bytes, repo: str) -> Manifest:
    key = manifest_key(repo)
    m = Manifest.from_json(raw, key)
    if m.repository != repo:
        raise ManifestError(f"{key}: names repository {m.repository!r}, not {repo!r}")
    return m


def encrypted_hint(store: ObjectStore, where: str) -> ManifestError | None:
    """The error to give when `store` is read (or written) without the key of the
    encrypted mirror it holds, or with a key for a plain one; None otherwise."""
    problem = store.key_mismatch()
    return ManifestError(f"{where} {problem}") if problem else None


def no_such_repository(store: ObjectStore, repo: str, where: str = "") -> ManifestError:
    where = where or "the mirror"
    return encrypted_hint(store, where) or ManifestError(
        f"{where}: no repository {repo!r} (no {manifest_key(repo)})")


def no_repositories(store: ObjectStore) -> ManifestError:
    return encrypted_hint(store, "the mirror") or ManifestError(
        "the mirror holds no repositories (no */manifest.json)")


def load_manifest(store: ObjectStore, repo: str, where: str = "") -> Manifest:
    m = read_manifest(store, repo)
    if m is None:
        raise no_such_repository(store, repo, where)
    return m


def list_repositories(store: ObjectStore) -> list[str]:
    """Names of the repositories with a manifest in the store."""
    out = []
    for key, _ in store.list(""):
        repo, sep, rest = key.partition("/")
        if sep and rest == MANIFEST_NAME:
            out.append(repo)
    return sorted(out)
