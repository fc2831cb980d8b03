"""Parity in the mirror: `mirror push` uploads each pack's par2 files with it
and lists them in the manifest (size, sha256), `mirror verify` checks them,
`mirror pull` brings them back; a manifest without parity (an older push's)
still loads. Against the real S3 server (SeaweedFS).

(Here rather than in tests/integrity: the S3 server is this directory's
session fixture, started once for every mirror test.)"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ketch.integrity import parity
from ketch.localrepo import LocalRepository
from ketch.offsite.manifest import Manifest, ManifestError, manifest_key, pack_key, read_manifest
from ketch.offsite.pull import pull
from ketch.offsite.push import push
from ketch.offsite.s3 import S3Store
from ketch.offsite.store import DirStore
from ketch.offsite.verify import verify
from ketch.save import SaveOptions, save
from tests.integrity.parityutil import need_par2, packs, saved_repo, sha256, write_data


@pytest.fixture
def store(s3_env: Any) -> S3Store:
    return S3Store(f"s3://{s3_env.new_bucket()}/mirror")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Two packs; the first has parity, the second not yet."""
    need_par2()
    repo = saved_repo(tmp_path, "web1")
    parity.generate(packs(repo)[0])
    write_data(tmp_path / "more", seed=2, size=200_000)
    with LocalRepository(str(repo)) as r:
        save(r, SaveOptions(name="m", paths=[str(tmp_path / "more")]))
    assert len(packs(repo)) == 2
    return repo


def _parity_of(m: Manifest) -> dict[str, list[tuple[str, int, str]]]:
    return {p.pack.name: [(f.name, f.size, f.sha256) for f in p.parity] for p in m.packs}


def _local(pack: str) -> list[tuple[str, int, str]]:
    """What the manifest should say of a pack's parity: recovery file first."""
    files = sorted(parity.parity_files(pack), key=lambda p: (".vol" not in p, p))
    return [(os.path.basename(p), os.path.getsize(p), sha256(p)) for p in files]


def test_push_verify_pull_carry_parity(store: S3Store, repo: Path, tmp_path: Path,
                                       s3_env: Any) -> None:
    with_parity = [p for p in packs(repo) if parity.has_parity(p)]
    without = [p for p in packs(repo) if not parity.has_parity(p)]
    push([str(repo)], store, storage_class="STANDARD_IA")
    m = read_manifest(store, "web1")
    assert m is not None
    assert _parity_of(m) == {os.path.basename(p): _local(p) for p in with_parity} | {
        os.path.basename(p): [] for p in without}
    doc = json.loads(store.get(manifest_key("web1")))
    assert [("parity" in p) for p in doc["packs"]] == [
        bool(_parity_of(m)[p["name"]]) for p in doc["packs"]]  # absent, not empty
    client = s3_env.client()
    for name, _, _ in _local(with_parity[0]):
        head = client.head_object(Bucket=store.bucket, Key=store.root + pack_key("web1", name))
        assert head.get("StorageClass") == "STANDARD_IA", name  # cold, like the pack

    # Parity made later goes up on the next push, alone, in a new manifest.
    parity.generate(without[0])
    again = push([str(repo)], store).repos[0]
    assert again.uploaded_files == 2 and again.manifest_written
    m = read_manifest(store, "web1")
    assert m is not None
    assert _parity_of(m) == {os.path.basename(p): _local(p) for p in packs(repo)}
    assert verify(store, ["web1"], read_data_percent=100).ok

    pulled = tmp_path / "pulled"
    assert pull(store, ["web1"], str(pulled)).exit_code == 0
    for p in packs(repo):
        twin = str(pulled / "web1" / "objects" / "pack" / os.path.basename(p))
        assert _local(twin) == _local(p)
        assert parity.verify(twin) is True


def test_verify_finds_missing_and_damaged_parity(store: S3Store, repo: Path) -> None:
    pack = next(p for p in packs(repo) if parity.has_parity(p))
    push([str(repo)], store)
    index, vol = (pack_key("web1", os.path.basename(p)) for p in parity.parity_files(pack))
    store.delete(index)
    store.put(vol, b"not the recovery file")
    rep = verify(store, ["web1"]).repos[0]
    assert rep.missing == [index]
    assert [c.split(":")[0] for c in rep.corrupted] == [vol]
    assert not rep.ok


def test_manifest_without_parity_loads(store: S3Store, repo: Path) -> None:
    push([str(repo)], store)
    doc = json.loads(store.get(manifest_key("web1")))
    for p in doc["packs"]:
        p.pop("parity", None)
    old = Manifest.from_json(json.dumps(doc).encode(), "old")  # an older ketch's push
    assert [p.parity for p in old.packs] == [(), ()]
    stem = doc["packs"][0]["name"][: -len(".pack")]
    for bad in ("../../etc/passwd", "pack-0000.par2", stem + ".vol1+2.par2x", stem + "x.par2"):
        doc["packs"][0]["parity"] = [{"name": bad, "size": 1, "sha256": "0" * 64}]
        with pytest.raises(ManifestError, match="bad parity file name"):
            Manifest.from_json(json.dumps(doc).encode(), "hostile")


def test_push_sends_a_pack_and_its_parity_before_its_idx(repo: Path, tmp_path: Path) -> None:
    """A reader of the bare bucket that finds an idx can count on its pack."""
    sent: list[str] = []

    class Logged(DirStore):
        def put_file(self, key: str, path: str, **kw: Any) -> None:
            sent.append(key.rsplit("/", 1)[1])
            super().put_file(key, path, **kw)

    parity.generate(packs(repo)[1])
    push([str(repo)], Logged(str(tmp_path / "bucket")))
    for pack in packs(repo):
        names = [os.path.basename(p) for p in (pack, *parity.parity_files(pack))]
        idx = os.path.basename(pack)[: -len(".pack")] + ".idx"
        assert all(sent.index(n) < sent.index(idx) for n in names), sent
