"""A hostile or damaged mirror: crafted manifests uploaded over the real one on
the real S3 server (SeaweedFS), then `ketch mirror pull` and reads in place.

The manifest parser itself is checked in-process over many bad manifests
(fast); the refusals that matter to a user go through the real server and,
for a few, the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import KetchError
from ketch.offsite.manifest import ManifestError, parse_manifest
from ketch.offsite.pull import pull
from ketch.offsite.push import push
from ketch.offsite.s3 import S3Store
from tests.conftest import RunKetch, _subprocess_env
from tests.offsite.conftest import S3Server

REPO = "small"
HEX = "ab" * 20


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hostile-manifest")
    tree, repo = base / "tree", base / REPO
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"hello\n" * 1000)
    for args in (["init", "-d", str(repo)], ["save", "-d", str(repo), "-n", "host", "-q",
                                              str(tree)]):
        subprocess.run([sys.executable, "-m", "ketch", *args], check=True,
                       env=_subprocess_env(None), capture_output=True)
    return repo


@pytest.fixture(scope="module")
def mirrored(s3_server: S3Server, source: Path) -> Iterator[dict[str, Any]]:
    """The repository pushed once to a bucket: its URL, bucket and original manifest."""
    bucket = s3_server.new_bucket()
    env = {"KETCH_S3_ENDPOINT": s3_server["endpoint"], "AWS_ACCESS_KEY_ID":
           s3_server["access_key"], "AWS_SECRET_ACCESS_KEY": s3_server["secret_key"],
           "AWS_DEFAULT_REGION": s3_server["region"], "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        url = f"s3://{bucket}/m"
        store = S3Store(url, endpoint_url=s3_server["endpoint"])
        assert not push([str(source)], store).failed
        client = s3_server.client()
        original = client.get_object(Bucket=bucket, Key=f"m/{REPO}/manifest.json")["Body"].read()
        yield {"url": url, "bucket": bucket, "store": store, "client": client,
               "original": original, "env": env}


@pytest.fixture
def mirror(mirrored: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The mirror, its manifest as pushed (put back after each test)."""
    yield mirrored
    mirrored["client"].put_object(Bucket=mirrored["bucket"], Key=f"m/{REPO}/manifest.json",
                                  Body=mirrored["original"])


def upload(mirror: dict[str, Any], change: Callable[[dict[str, Any]], object] | bytes,
           key: str = f"{REPO}/manifest.json") -> None:
    if isinstance(change, bytes):
        body = change
    else:
        doc = json.loads(mirror["original"])
        change(doc)
        body = json.dumps(doc).encode()
    mirror["client"].put_object(Bucket=mirror["bucket"], Key=f"m/{key}", Body=body)


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# -- the parser, in-process ---------------------------------------------------------------


def _doc() -> dict[str, Any]:
    return {"format": "ketch-mirror", "version": 1, "repository": REPO, "generation": 3,
            "time": "2026-01-01T00:00:00Z", "head": "ref: refs/heads/host",
            "refs": {"refs/heads/host": HEX}, "config": "",
            "packs": [{"name": f"pack-{HEX}.pack", "size": 10, "sha256": "0" * 64,
                       "mtime": 0, "idx": {"name": f"pack-{HEX}.idx", "size": 10,
                                           "sha256": "1" * 64}}]}


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        d: Any = doc
        for p in parents:
            d = d[int(p)] if p.isdigit() else d[p]
        d[int(last) if last.isdigit() else last] = value
    return change


def _ref(name: str) -> Callable[[dict[str, Any]], None]:
    return _set("refs", {name: HEX})


BAD_MANIFESTS: dict[str, Callable[[dict[str, Any]], object] | bytes] = {
    "ref ..": _ref("../../../tmp/x"),
    "ref absolute": _ref("/etc/passwd"),
    "ref refs/..": _ref("refs/../../x"),
    "ref inner ..": _ref("refs/heads/a/../../../../x"),
    "ref dot component": _ref("refs/heads/./x"),
    "ref .lock": _ref("refs/heads/x.lock"),
    "ref NUL": _ref("refs/heads/x\0y"),
    "ref control char": _ref("refs/heads/x\ny"),
    "ref backslash": _ref("refs\\heads\\x"),
    "ref ends /": _ref("refs/heads/"),
    "ref id not hex": _set("refs", {"refs/heads/host": "zz" * 20}),
    "ref id short": _set("refs", {"refs/heads/host": "ab"}),
    "refs a list": _set("refs", ["refs/heads/host"]),
    "head ..": _set("head", "ref: refs/../../../etc/passwd"),
    "head newline": _set("head", "ref: refs/heads/host\n[core]"),
    "head junk": _set("head", "/etc/passwd"),
    "pack ..": _set("packs.0.name", "../../../x.pack"),
    "pack absolute": _set("packs.0.name", f"/tmp/pack-{HEX}.pack"),
    "pack subdir": _set("packs.0.name", f"x/pack-{HEX}.pack"),
    "idx ..": _set("packs.0.idx.name", "../../x.idx"),
    "idx of another pack": _set("packs.0.idx.name", f"pack-{'cd' * 20}.idx"),
    "negative size": _set("packs.0.size", -1),
    "negative idx size": _set("packs.0.idx.size", -5),
    "size Infinity": _set("packs.0.size", float("inf")),
    "size NaN": _set("packs.0.size", float("nan")),
    "size 1e400": b'{"format": "ketch-mirror", "version": 1, "packs": [{"size": 1e400}]}',
    "size a string": _set("packs.0.size", "ten"),
    "size huge": _set("packs.0.size", 1 << 80),
    "size float": _set("packs.0.size", 10.5),
    "sha256 short": _set("packs.0.sha256", "ab"),
    "sha256 not hex": _set("packs.0.sha256", "z" * 64),
    "sha256 upper": _set("packs.0.idx.sha256", "A" * 64),
    "sha256 a number": _set("packs.0.sha256", 5),
    "version 2": _set("version", 2),
    "version string": _set("version", "1"),
    "format other": _set("format", "git"),
    "repository other": _set("repository", "other"),
    "repository ..": _set("repository", ".."),
    "repository traversal": _set("repository", "../small"),
    "generation Infinity": _set("generation", float("inf")),
    "packs not a list": _set("packs", {"a": 1}),
    "pack not an object": _set("packs", [5]),
    "no refs": lambda d: d.pop("refs"),
    "not JSON": b"\xff\xfe not json",
    "a list": b"[1, 2, 3]",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "empty": b"",
    "huge integer text": b'{"format": "ketch-mirror", "version": 1' + b"0" * 10_000 + b"}",
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifests_are_refused_in_one_line(case: str) -> None:
    change = BAD_MANIFESTS[case]
    if isinstance(change, bytes):
        raw = change
    else:
        doc = _doc()
        change(doc)
        raw = json.dumps(doc).encode()
    with pytest.raises(ManifestError) as e:
        parse_manifest(raw, REPO)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg


def test_the_good_manifest_passes() -> None:
    assert parse_manifest(json.dumps(_doc()).encode(), REPO).refs == {"refs/heads/host": HEX}


# -- pull, against the real S3 server -------------------------------------------------------


def test_pull_refuses_a_traversing_ref(mirror: dict[str, Any], tmp_path: Path,
                                       run_ketch: RunKetch) -> None:
    upload(mirror, _ref("refs/heads/../../../../escaped"))
    dest = tmp_path / "dest"
    res = run_ketch("mirror", "pull", mirror["url"], dest, REPO, env=mirror["env"])
    assert res.returncode == 2, res.stderr
    assert b"Traceback" not in res.stderr
    assert res.stdout.decode().splitlines()[0].startswith(f"{REPO}: FAILED: ")
    assert b"bad ref in manifest" in res.stdout
    assert not (tmp_path / "escaped").exists()
    assert not dest.exists() or files_under(dest) == set()


def test_pull_checks_size_and_sha256(mirror: dict[str, Any], tmp_path: Path,
                                     run_ketch: RunKetch) -> None:
    """A pack altered in the store (same size) fails its sha256; nothing is renamed into place."""
    doc = json.loads(mirror["original"])
    pack = doc["packs"][0]["name"]
    key = f"m/{REPO}/objects/pack/{pack}"
    good = mirror["client"].get_object(Bucket=mirror["bucket"], Key=key)["Body"].read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x40
    mirror["client"].put_object(Bucket=mirror["bucket"], Key=key, Body=bytes(bad))
    dest = tmp_path / "dest"
    try:
        res = run_ketch("mirror", "pull", mirror["url"], dest, REPO, env=mirror["env"])
    finally:
        mirror["client"].put_object(Bucket=mirror["bucket"], Key=key, Body=good)
    assert res.returncode == 2, res.stderr
    out = res.stdout.decode()
    assert f"{REPO}: FAILED: {REPO}/objects/pack/{pack}: sha256 " in out, out
    assert "does not match the manifest" in out
    assert not (dest / REPO / "objects" / "pack" / pack).exists()
    assert all(p.is_relative_to(dest / REPO) for p in files_under(tmp_path))


@pytest.mark.parametrize(("change", "says"), [
    (_set("packs.0.size", 12345), "the store holds"),
    (_set("packs.0.idx.sha256", "0" * 64), "does not match the manifest"),
    (_set("packs.0.name", f"pack-{HEX}.pack"), "missing"),
    (_set("repository", "other"), "names repository 'other'"),
    (_set("version", 9), "manifest version 9 is not supported"),
    (_ref("/etc/passwd"), "bad ref in manifest"),
    (b"[" * 100_000, "malformed manifest"),
])
def test_pull_refuses_what_the_manifest_gets_wrong(mirror: dict[str, Any], tmp_path: Path,
                                                   change: Any, says: str) -> None:
    if says == "missing":
        orig = change
        change = lambda d: (orig(d), _set("packs.0.idx.name", f"pack-{HEX}.idx")(d))  # noqa: E731
    upload(mirror, change)
    dest = tmp_path / "dest"
    report = pull(mirror["store"], [REPO], str(dest))
    assert report.exit_code == 2
    [failed] = report.failed
    assert failed.error is not None and says in failed.error, failed.error
    assert "\n" not in failed.error
    packs = dest / REPO / "objects" / "pack"
    assert not packs.exists() or not [p for p in packs.iterdir() if p.suffix == ".pack"
                                      and "size" in says]
    assert all(p.is_relative_to(dest) for p in files_under(tmp_path))


def test_reading_in_place_refuses_a_bad_manifest(mirror: dict[str, Any],
                                                 run_ketch: RunKetch) -> None:
    upload(mirror, _set("packs.0.sha256", "not hex"))
    res = run_ketch("ls", "-r", f"{mirror['url']}/{REPO}", "host", env=mirror["env"])
    assert res.returncode == 2
    lines = res.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ketch: error: "), lines
    assert "bad size or sha256" in lines[0], lines


@pytest.mark.parametrize("field", ["packs.0.size", "packs.0.idx.size"])
@pytest.mark.parametrize("delta", [1000, -1000, 1 << 45])
def test_reading_in_place_with_wrong_sizes(mirror: dict[str, Any], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, field: str,
                                           delta: int) -> None:
    """Sizes the manifest gets wrong: a clear error (or, for a pack said to be
    bigger, the right objects: ranged reads end where the pack does)."""
    from ketch.offsite.s3repo import StoreRepository

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    doc = json.loads(mirror["original"])
    *parents, last = field.split(".")
    d: Any = doc
    for p in parents:
        d = d[int(p)] if p.isdigit() else d[p]
    d[last] = max(d[last] + delta, 0)
    upload(mirror, json.dumps(doc).encode())
    head = bytes.fromhex(doc["refs"]["refs/heads/host"])
    tracemalloc.start()
    try:
        with StoreRepository(mirror["store"], REPO, url=mirror["url"]) as sr:
            t, data = sr.read(head)
            assert t == 1 and data.startswith(b"tree ")
    except KetchError as e:
        assert "\n" not in str(e), e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 64 << 20, peak


@pytest.mark.parametrize("config", [
    "[core]\n\tpager = touch /tmp/ketch-pwned\n", "[core] fsmonitor = touch /tmp/ketch-pwned\n",
    "[include]\n\tpath = /etc/gitconfig\n", "[alias]\n\tlog = !touch /tmp/ketch-pwned\n",
    "[core\n",
])
def test_pull_refuses_a_config_that_could_run_programs(mirror: dict[str, Any], tmp_path: Path,
                                                       config: str) -> None:
    """The manifest's config becomes the pulled repository's: a key git would run a
    program for (the next `git log` there, on a terminal) is refused."""
    upload(mirror, _set("config", config))
    dest = tmp_path / "dest"
    report = pull(mirror["store"], [REPO], str(dest))
    assert report.exit_code == 2
    [failed] = report.failed
    assert failed.error is not None and failed.error.startswith(f"{REPO}/manifest.json: the "
                                                                "config "), failed.error
    assert not (dest / REPO).exists()
