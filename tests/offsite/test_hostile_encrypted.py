"""An encrypted mirror on the real S3 server (SeaweedFS) that someone with
write access to the bucket has altered: flipped bits in a pack, the manifest
or the name index, an index that decrypts to nonsense, and an older
manifest's ciphertext put back under its name (replay)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.offsite.encrypt import EncryptedStore
from ketch.offsite.keyfile import save_key
from ketch.offsite.nameindex import _INDEX_NAME, INDEX_KEY
from ketch.offsite.push import push
from ketch.offsite.s3 import S3Store
from ketch.offsite.s3repo import StoreRepository
from ketch.offsite.store import StoreError
from tests.conftest import RunKetch, _subprocess_env
from tests.offsite.conftest import S3Server

REPO = "small"


def _ketch(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ketch", *args], check=True,
                   env=_subprocess_env(None), capture_output=True)


@pytest.fixture(scope="module")
def mirror(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("hostile-encrypted")
    tree, repo, key_file = base / "tree", base / REPO, base / "mirror.key"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"first\n" * 1000)
    _ketch("init", "-d", str(repo))
    _ketch("save", "-d", str(repo), "-n", "host", "-q", str(tree))
    key = save_key(str(key_file))
    bucket = s3_server.new_bucket()
    env = {"KETCH_S3_ENDPOINT": s3_server["endpoint"], "AWS_ACCESS_KEY_ID":
           s3_server["access_key"], "AWS_SECRET_ACCESS_KEY": s3_server["secret_key"],
           "AWS_DEFAULT_REGION": s3_server["region"], "AWS_EC2_METADATA_DISABLED": "true",
           "KETCH_ENCRYPT_KEY": str(key_file)}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        url = f"s3://{bucket}/m"
        enc = EncryptedStore(S3Store(url, endpoint_url=s3_server["endpoint"]), key)
        assert not push([str(repo)], enc).failed
        yield {"url": url, "bucket": bucket, "enc": enc, "client": s3_server.client(),
               "env": env, "repo": repo, "tree": tree, "key": key}


class Object:
    """One stored (encrypted) object, by its name in the mirror: altered for a test,
    then put back."""

    def __init__(self, mirror: dict[str, Any], name: str) -> None:
        self.client, self.bucket = mirror["client"], mirror["bucket"]
        hidden = name if name == INDEX_KEY else mirror["enc"].inner_key(name)
        self.key = f"m/{hidden}"
        self.good = self.get()

    def get(self) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        return body

    def put(self, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data)

    def flip(self, pos: int) -> None:
        bad = bytearray(self.good)
        bad[pos] ^= 0x01
        self.put(bytes(bad))


def _pack_name(mirror: dict[str, Any]) -> str:
    manifest = json.loads(mirror["enc"].get(f"{REPO}/manifest.json"))
    name: str = manifest["packs"][0]["name"]
    return name


def _one_line(res: subprocess.CompletedProcess[bytes]) -> str:
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 2, (res.returncode, err, res.stdout)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ketch: error: "), lines
    assert "\0" not in lines[0] and "\\x00" not in lines[0], lines
    assert "internal error" not in lines[0], lines
    return lines[0]


def test_a_flipped_bit_in_a_pack_fails_the_pull(mirror: dict[str, Any], tmp_path: Path,
                                                run_ketch: RunKetch) -> None:
    pack = _pack_name(mirror)
    obj = Object(mirror, f"{REPO}/objects/pack/{pack}")
    obj.flip(len(obj.good) // 2)
    dest = tmp_path / "dest"
    try:
        res = run_ketch("mirror", "pull", mirror["url"], dest, REPO, env=mirror["env"])
    finally:
        obj.put(obj.good)
    assert res.returncode == 2, res.stderr
    out = res.stdout.decode()
    assert out.startswith(f"{REPO}: FAILED: {REPO}/objects/pack/{pack}: segment "), out
    assert "failed authentication" in out
    assert not (dest / REPO / "objects" / "pack" / pack).exists()
    assert all(p.is_relative_to(dest / REPO) for p in tmp_path.rglob("*") if p.is_file())


def _tampered_manifest(obj: Object, where: str) -> None:
    if where == "header":
        obj.flip(10)  # a reserved byte
    elif where == "body":
        obj.flip(60)
    elif where == "tag":
        obj.flip(len(obj.good) - 1)
    elif where == "truncated":
        obj.put(obj.good[:-5])
    else:
        obj.put(obj.good + b"\0" * 40)


@pytest.mark.parametrize("where", ["header", "body", "tag", "truncated", "extended"])
def test_a_tampered_manifest_is_refused(mirror: dict[str, Any], where: str) -> None:
    obj = Object(mirror, f"{REPO}/manifest.json")
    _tampered_manifest(obj, where)
    fresh = EncryptedStore(mirror["enc"].inner, mirror["key"])
    try:
        with pytest.raises(StoreError) as e:
            StoreRepository(fresh, REPO, url=mirror["url"])
    finally:
        obj.put(obj.good)
    msg = str(e.value)
    assert msg.startswith(f"{REPO}/manifest.json: ") and "\n" not in msg, msg
    assert any(s in msg for s in ("failed authentication", "altered", "hold", "truncated")), msg


def test_a_tampered_manifest_is_one_line(mirror: dict[str, Any], run_ketch: RunKetch) -> None:
    obj = Object(mirror, f"{REPO}/manifest.json")
    _tampered_manifest(obj, "body")
    try:
        res = run_ketch("ls", "-r", f"{mirror['url']}/{REPO}", "host", env=mirror["env"])
    finally:
        obj.put(obj.good)
    line = _one_line(res)
    assert line == (f"ketch: error: {REPO}/manifest.json: segment 0 failed authentication "
                    "(altered, truncated or moved)"), line


def test_a_tampered_name_index_is_one_line(mirror: dict[str, Any], run_ketch: RunKetch) -> None:
    obj = Object(mirror, INDEX_KEY)
    obj.flip(len(obj.good) // 2)
    try:
        res = run_ketch("mirror", "verify", mirror["url"], env=mirror["env"])
    finally:
        obj.put(obj.good)
    line = _one_line(res)
    assert line.startswith("ketch: error: ketch-keys: segment 0 failed authentication"), line


@pytest.mark.parametrize("plain", [
    b"not json", b'{"v": 2, "keys": {}}', b'{"v": 1, "keys": []}',
    b'{"v": 1, "keys": {"small/manifest.json": "x"}}',
    b'{"v": 1, "keys": {"small/manifest.json": [1]}}',
    b'{"v": 1, "keys": {"small/manifest.json": ["x", "y", "z"]}}',
    b'{"v": 1, "keys": {"small/manifest.json": [-1, "' + b"a" * 64 + b'", "' + b"b" * 64
    + b'"]}}',
    b'[' * 50000,
])
def test_an_unreadable_name_index_is_refused(mirror: dict[str, Any], plain: bytes) -> None:
    """Bytes the key authenticates but that are no index (a bug elsewhere, or the
    key in the wrong hands): refused, not misread."""
    obj = Object(mirror, INDEX_KEY)
    obj.put(mirror["enc"]._encrypt_bytes(_INDEX_NAME, plain))
    fresh = EncryptedStore(mirror["enc"].inner, mirror["key"])
    try:
        with pytest.raises(StoreError) as e:
            list(fresh.list(""))
    finally:
        obj.put(obj.good)
    msg = str(e.value)
    assert msg.startswith("ketch-keys: unreadable index (") and "\n" not in msg, msg


def test_an_unreadable_name_index_is_one_line(mirror: dict[str, Any],
                                              run_ketch: RunKetch) -> None:
    obj = Object(mirror, INDEX_KEY)
    obj.put(mirror["enc"]._encrypt_bytes(_INDEX_NAME, b'{"v": 1, "keys": {"a": "x"}}'))
    try:
        res = run_ketch("mirror", "verify", mirror["url"], env=mirror["env"])
    finally:
        obj.put(obj.good)
    line = _one_line(res)
    assert line == "ketch: error: ketch-keys: unreadable index (bad entry for a)", line


def test_replay_of_an_older_manifest(mirror: dict[str, Any], run_ketch: RunKetch) -> None:
    """Yesterday's manifest ciphertext put back over today's under the same name.

    The format binds a ciphertext to its name (associated data), not to a
    version, so the older manifest authenticates; the name index, which records
    each value's digest, says it is not the current one. A push, whose source
    of truth is the repository, publishes over it. (Replaying the index along
    with it would need state kept outside the bucket: not detected.)"""
    obj = Object(mirror, f"{REPO}/manifest.json")
    yesterday = obj.good
    (mirror["tree"] / "b.txt").write_bytes(b"second\n")
    _ketch("save", "-d", str(mirror["repo"]), "-n", "host", "-q", str(mirror["tree"]))
    with pytest.MonkeyPatch.context() as mp:
        for k, v in mirror["env"].items():
            mp.setenv(k, v)
        assert not push([str(mirror["repo"])], mirror["enc"]).failed
    today = obj.get()
    assert today != yesterday
    ok = run_ketch("ls", "-r", f"{mirror['url']}/{REPO}", "host", env=mirror["env"])
    assert ok.returncode == 0 and ok.stdout.count(b"\n") == 3, ok.stdout  # two saves + latest
    obj.put(yesterday)
    res = run_ketch("ls", "-r", f"{mirror['url']}/{REPO}", "host", env=mirror["env"])
    line = _one_line(res)
    assert line == (f"ketch: error: {REPO}/manifest.json: not the copy the encrypted store's "
                    "index records (an older one put back, or a push cut short: push again)"), line
    again = run_ketch("mirror", "push", mirror["repo"], mirror["url"], env=mirror["env"])
    assert again.returncode == 0, again.stdout + again.stderr
    ok = run_ketch("ls", "-r", f"{mirror['url']}/{REPO}", "host", env=mirror["env"])
    assert ok.returncode == 0 and ok.stdout.count(b"\n") == 3, ok.stdout + ok.stderr
