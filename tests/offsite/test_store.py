"""Object stores against a real S3 server (SeaweedFS) and a local directory:
S3Store, RetryingStore, EncryptedStore, CachingStore and key files."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.offsite.cache import CachingStore
from ketch.offsite.encrypt import (
    HEADER_SIZE,
    OVERHEAD,
    EncryptedStore,
    TamperedError,
    WrongKeyError,
)
from ketch.offsite.keyfile import KeyFileError, keygen, load_key, save_key
from ketch.offsite.nameindex import INDEX_KEY
from ketch.offsite.retry import RetryingStore
from ketch.offsite.s3 import AuthError, S3Store, parse_s3_url
from ketch.offsite.store import DirStore, NotFound, ObjectStore, Stat, StoreError, TransientError
from tests.conftest import SRC_DIR
from tests.offsite.conftest import S3Server

MiB = 1 << 20
MARKER = b"PLAINTEXT-MARKER-7f3a"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _count_calls(store: S3Store, operation: str) -> list[dict[str, Any]]:
    """Every `operation` request the store's client sends, as its parameters."""
    calls: list[dict[str, Any]] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        calls.append(params)

    store.client.meta.events.register(f"before-parameter-build.s3.{operation}", hook)
    return calls


class Counting:
    """An ObjectStore that passes everything to `inner` and counts the calls."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.calls if n == name)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        self.calls.append(("get", (key, start, end)))
        return self.inner.get(key, start, end)

    def put_file(self, key: str, path: str, *, sha256: str, storage_class: str | None = None,
                 advance: Callable[[int], None] | None = None) -> None:
        self.calls.append(("put_file", (key,)))
        self.inner.put_file(key, path, sha256=sha256, storage_class=storage_class,
                            advance=advance)

    def put(self, key: str, data: bytes) -> None:
        self.calls.append(("put", (key,)))
        self.inner.put(key, data)

    def stat(self, key: str) -> Stat | None:
        self.calls.append(("stat", (key,)))
        return self.inner.stat(key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        self.calls.append(("list", (prefix,)))
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.calls.append(("delete", (key,)))
        self.inner.delete(key)


# -- S3Store -------------------------------------------------------------------------


def test_parse_url() -> None:
    assert parse_s3_url("s3://b") == ("b", "")
    assert parse_s3_url("s3://b/x/y/") == ("b", "x/y")
    with pytest.raises(StoreError.__mro__[1]):  # KetchError: a usage error
        parse_s3_url("http://b/x")


def test_importing_does_not_import_boto3(repo_dir: Path) -> None:
    code = (
        "import sys\n"
        "import ketch.offsite.s3, ketch.offsite.encrypt, ketch.offsite.retry, ketch.offsite.cache\n"
        "from ketch.cli.main import main\n"
        f"sys.argv = ['ketch', 'ls', '-d', {str(repo_dir)!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr.decode()


def test_put_get_stat_list_delete(s3_url: str, s3_env: S3Server) -> None:
    store = S3Store(s3_url + "/some/prefix")
    data = bytes(range(256)) * 40
    store.put("a/one", data)
    store.put("a/two", b"")
    store.put("b", b"x")
    assert store.get("a/one") == data
    assert store.get("a/one", 10, 20) == data[10:20]
    assert store.get("a/one", 10_000) == data[10_000:]
    assert store.get("a/one", len(data)) == b""
    assert store.get("a/one", len(data) + 5, len(data) + 10) == b""
    assert store.get("a/one", 5, 5) == b""
    assert store.get("a/two") == b""
    assert store.stat("a/one") == Stat(len(data), _sha(data))
    assert store.stat("a/two") == Stat(0, _sha(b""))
    assert store.stat("nope") is None
    assert list(store.list("a/")) == [("a/one", len(data)), ("a/two", 0)]
    assert [k for k, _ in store.list("")] == ["a/one", "a/two", "b"]
    # The prefix is the store's root: nothing outside it shows, nothing leaks in.
    raw = s3_env.client().list_objects_v2(Bucket=parse_s3_url(s3_url)[0])
    assert sorted(o["Key"] for o in raw["Contents"]) == [
        "some/prefix/a/one", "some/prefix/a/two", "some/prefix/b"]
    store.delete("a/one")
    store.delete("a/one")  # deleting what is gone is fine
    assert store.stat("a/one") is None
    with pytest.raises(NotFound, match="not found"):
        store.get("a/one")
    with pytest.raises(NotFound):
        store.get("a/one", 3, 3)
    with pytest.raises(StoreError, match="bad key"):
        store.get("../x")


def test_list_paginates(s3_url: str) -> None:
    store = S3Store(s3_url, page_size=4)
    keys = [f"k/{i:03d}" for i in range(23)]
    for k in keys:
        store.put(k, k.encode())
    store.put("other", b"")
    requests = _count_calls(store, "ListObjectsV2")
    assert list(store.list("k/")) == [(k, 5) for k in keys]
    assert len(requests) == 6 and all(r["MaxKeys"] == 4 for r in requests)


def test_put_file_small_and_storage_class(s3_url: str, s3_env: S3Server, tmp_path: Path) -> None:
    store = S3Store(s3_url)
    data = os.urandom(100_000)
    moved: list[int] = []
    store.put_file("p.pack", _write(tmp_path / "f", data), sha256=_sha(data),
                   storage_class="STANDARD_IA", advance=moved.append)
    assert sum(moved) == len(data)
    assert store.get("p.pack") == data
    assert store.stat("p.pack") == Stat(len(data), _sha(data))
    head = s3_env.client().head_object(Bucket=parse_s3_url(s3_url)[0], Key="p.pack")
    assert head["StorageClass"] == "STANDARD_IA"
    assert head["Metadata"]["sha256"] == _sha(data)
    # A file that is not what the caller says is refused before upload.
    with pytest.raises(StoreError, match="does not match its sha256"):
        store.put_file("q.pack", str(tmp_path / "f"), sha256=_sha(b"other"))
    assert store.stat("q.pack") is None


def _multipart_store(url: str) -> S3Store:
    # 5 MiB is S3's smallest part; a low threshold makes a small file multipart.
    return S3Store(url, multipart_threshold=8 * MiB, part_size=5 * MiB, workers=4)


class Interrupted(Exception):
    pass


def test_multipart_upload_resumes_after_an_interruption(s3_url: str, s3_env: S3Server,
                                                        tmp_path: Path) -> None:
    data = os.urandom(100 * MiB + 12345)  # 21 parts, the last one short
    path, sha = _write(tmp_path / "big", data), _sha(data)
    nparts = -(-len(data) // (5 * MiB))
    store = _multipart_store(s3_url)
    seen: list[int] = []

    def advance(n: int) -> None:
        seen.append(n)
        if len(seen) == 6:
            raise Interrupted

    with pytest.raises(Interrupted):
        store.put_file("objects/pack/big.pack", path, sha256=sha, advance=advance)
    assert store.stat("objects/pack/big.pack") is None
    client, bucket = s3_env.client(), parse_s3_url(s3_url)[0]
    uploads = client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["Key"] for u in uploads] == ["objects/pack/big.pack"]
    present = client.list_parts(Bucket=bucket, Key="objects/pack/big.pack",
                                UploadId=uploads[0]["UploadId"])["Parts"]
    assert 6 <= len(present) < nparts

    # A fresh store (a new process, as it were) finds the upload and sends the rest.
    store = _multipart_store(s3_url)
    sent = _count_calls(store, "UploadPart")
    moved: list[int] = []
    store.put_file("objects/pack/big.pack", path, sha256=sha, advance=moved.append)
    assert len(sent) == nparts - len(present)
    assert sorted(p["PartNumber"] for p in sent) == sorted(
        set(range(1, nparts + 1)) - {p["PartNumber"] for p in present})
    assert sum(moved) == len(data) - sum(p["Size"] for p in present)
    assert store.stat("objects/pack/big.pack") == Stat(len(data), sha)
    assert hashlib.sha256(store.get("objects/pack/big.pack")).hexdigest() == sha
    assert store.get("objects/pack/big.pack", 5 * MiB - 3, 5 * MiB + 3) == data[
        5 * MiB - 3:5 * MiB + 3]
    head = client.head_object(Bucket=bucket, Key="objects/pack/big.pack")
    assert head["ETag"].strip('"').endswith(f"-{nparts}")
    assert "Uploads" not in client.list_multipart_uploads(Bucket=bucket) or not (
        client.list_multipart_uploads(Bucket=bucket)["Uploads"])


def test_resume_replaces_parts_that_differ(s3_url: str, s3_env: S3Server,
                                           tmp_path: Path) -> None:
    """A left-over part of the right size but the wrong bytes is sent again."""
    data = os.urandom(12 * MiB)
    path, sha = _write(tmp_path / "f", data), _sha(data)
    client, bucket = s3_env.client(), parse_s3_url(s3_url)[0]
    upload = client.create_multipart_upload(Bucket=bucket, Key="k", ChecksumAlgorithm="SHA256",
                                            Metadata={"sha256": sha})["UploadId"]
    client.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1,
                       Body=data[:5 * MiB], ChecksumAlgorithm="SHA256")
    client.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=2,
                       Body=bytes(5 * MiB), ChecksumAlgorithm="SHA256")
    store = _multipart_store(s3_url)
    sent = _count_calls(store, "UploadPart")
    store.put_file("k", path, sha256=sha)
    assert sorted(p["PartNumber"] for p in sent) == [2, 3]
    assert store.get("k") == data


def test_multipart_of_a_changed_file_is_aborted(s3_url: str, s3_env: S3Server,
                                                tmp_path: Path) -> None:
    data = os.urandom(11 * MiB)
    store = _multipart_store(s3_url)
    with pytest.raises(StoreError, match="does not match its sha256"):
        store.put_file("k", _write(tmp_path / "f", data), sha256=_sha(b"something else"))
    assert store.stat("k") is None
    uploads = s3_env.client().list_multipart_uploads(Bucket=parse_s3_url(s3_url)[0])
    assert not uploads.get("Uploads")


def test_content_md5_mode(s3_url: str, s3_env: S3Server, tmp_path: Path) -> None:
    """Without additional checksums (old gateways) uploads carry Content-MD5 and
    are checked by ETag, parts and the multipart ETag included."""
    store = S3Store(s3_url, multipart_threshold=8 * MiB, part_size=5 * MiB, checksums=False)
    sent = _count_calls(store, "UploadPart")
    data = os.urandom(11 * MiB)
    store.put_file("big", _write(tmp_path / "f", data), sha256=_sha(data))
    assert len(sent) == 3 and all("ContentMD5" in p and "ChecksumSHA256" not in p for p in sent)
    assert store.stat("big") == Stat(len(data), _sha(data))
    store.put("small", b"abc")
    assert store.get("small") == b"abc"


def test_falls_back_when_checksums_are_refused(s3_url: str) -> None:
    from botocore.exceptions import ClientError

    store = S3Store(s3_url)
    real_put = store.client.put_object

    def old_gateway_put(**kwargs: Any) -> Any:
        if "ChecksumSHA256" in kwargs:
            raise ClientError({"Error": {"Code": "NotImplemented", "Message":
                                         "x-amz-checksum-sha256 is not implemented"}},
                              "PutObject")
        return real_put(**kwargs)

    store.client.put_object = old_gateway_put
    store.put("k", b"value")
    assert store.checksums is False and store.get("k") == b"value"


def test_corruption_is_caught(s3_url: str, s3_env: S3Server, tmp_path: Path) -> None:
    store = S3Store(s3_url)
    data = os.urandom(50_000)

    # Bytes damaged on the way (after we computed the checksum) are refused
    # by the server, and nothing is stored.
    def damage(request: Any, **_: Any) -> None:
        raw = request.body
        body = bytearray(raw if isinstance(raw, bytes) else raw.read())
        body[100] ^= 1
        request.body = bytes(body)

    store.client.meta.events.register("before-send.s3.PutObject", damage)
    with pytest.raises(StoreError) as info:
        store.put_file("k", _write(tmp_path / "f", data), sha256=_sha(data))
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    store.client.meta.events.unregister("before-send.s3.PutObject", damage)
    assert store.stat("k") is None

    # An object replaced behind our back no longer carries our digest.
    store.put_file("k", str(tmp_path / "f"), sha256=_sha(data))
    assert store.stat("k") == Stat(len(data), _sha(data))
    s3_env.client().put_object(Bucket=parse_s3_url(s3_url)[0], Key="k", Body=b"x" * len(data))
    assert store.stat("k") != Stat(len(data), _sha(data))


def test_errors_are_one_line_without_secrets(s3_url: str, s3_env: S3Server,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-123")
    with pytest.raises(AuthError) as info:
        S3Store(s3_url).put("k", b"x")
    assert "SignatureDoesNotMatch" in str(info.value)
    assert "wrong-secret-123" not in str(info.value) and "\n" not in str(info.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthError, match="no S3 credentials"):
        S3Store(s3_url).get("k")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env["secret_key"])
    # (SeaweedFS makes a bucket on PUT, so a read it is.)
    with pytest.raises(StoreError, match="NoSuchBucket") as no_bucket:
        S3Store("s3://no-such-bucket-here").get("k")
    assert not isinstance(no_bucket.value, (NotFound, TransientError))
    with pytest.raises(StoreError, match="NoSuchBucket"):
        list(S3Store("s3://no-such-bucket-here").list(""))


def test_endpoint_from_the_environment(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = os.environ["KETCH_S3_ENDPOINT"]
    assert S3Store(s3_url).endpoint_url == endpoint
    monkeypatch.delenv("KETCH_S3_ENDPOINT")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    store = S3Store(s3_url)
    store.put("k", b"v")
    assert store.get("k") == b"v"
    assert S3Store(s3_url, endpoint_url="http://127.0.0.1:1").endpoint_url == "http://127.0.0.1:1"


# -- RetryingStore -------------------------------------------------------------------


class FlakyProxy:
    """A TCP relay to `target` whose first `failures` connections get an HTTP
    503 SlowDown instead (a real throttled S3 says just that)."""

    def __init__(self, target: tuple[str, int], failures: int) -> None:
        self.target = target
        self.failures = failures
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.failures:
                threading.Thread(target=self._refuse, args=(conn,), daemon=True).start()
            else:
                threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _refuse(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            body = (b"<?xml version='1.0'?><Error><Code>SlowDown</Code>"
                    b"<Message>Please reduce your request rate.</Message></Error>")
            conn.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    def _relay(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(self.target)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)

    def close(self) -> None:
        self.sock.close()


def test_retrying_store_rides_out_throttling(s3_url: str) -> None:
    S3Store(s3_url).put("k", b"value")
    host, port = os.environ["KETCH_S3_ENDPOINT"].removeprefix("http://").split(":")
    proxy = FlakyProxy((host, int(port)), failures=2)
    try:
        # botocore's own retries off: RetryingStore is what is tested.
        inner = S3Store(s3_url, endpoint_url=f"http://127.0.0.1:{proxy.port}", max_attempts=1)
        with pytest.raises(TransientError, match="SlowDown"):
            inner.get("k")
        delays: list[float] = []
        store = RetryingStore(inner, attempts=5, base_delay=0.2, sleep=delays.append)
        assert store.get("k") == b"value"
        assert proxy.connections == 3 and len(delays) == 1
        assert 0.1 <= delays[0] <= 0.2
    finally:
        proxy.close()


def test_retrying_store_gives_up_and_backs_off(s3_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        closed_port = s.getsockname()[1]
    inner = S3Store(s3_url, endpoint_url=f"http://127.0.0.1:{closed_port}", max_attempts=1)
    delays: list[float] = []
    store = RetryingStore(inner, attempts=4, base_delay=0.2, sleep=delays.append)
    with pytest.raises(TransientError, match="tried 4 times") as info:
        store.stat("k")
    assert "\n" not in str(info.value)
    assert len(delays) == 3
    for i, d in enumerate(delays):  # exponential, with jitter in the upper half
        assert 0.2 * 2**i / 2 <= d <= 0.2 * 2**i


def test_one_layer_retries(s3_url: str) -> None:
    """botocore tries once; RetryingStore's attempts are all the tries there are
    (not botocore's 3 under each of RetryingStore's 5)."""
    host, port = os.environ["KETCH_S3_ENDPOINT"].removeprefix("http://").split(":")
    proxy = FlakyProxy((host, int(port)), failures=1000)
    try:
        inner = S3Store(s3_url, endpoint_url=f"http://127.0.0.1:{proxy.port}")
        with pytest.raises(TransientError, match="SlowDown"):
            inner.get("k")
        assert proxy.connections == 1
        store = RetryingStore(inner, attempts=5, sleep=lambda _: None)
        with pytest.raises(TransientError, match="tried 5 times"):
            store.get("k")
        assert proxy.connections == 1 + 5
    finally:
        proxy.close()


def test_retrying_store_does_not_retry_not_found_or_auth(s3_url: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    counting = Counting(S3Store(s3_url))
    delays: list[float] = []
    store = RetryingStore(counting, sleep=delays.append)
    with pytest.raises(NotFound):
        store.get("missing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    counting.inner = S3Store(s3_url)
    with pytest.raises(AuthError):
        store.put("k", b"x")
    assert counting.count("get") == 1 and counting.count("put") == 1 and delays == []


# -- EncryptedStore -------------------------------------------------------------------


@pytest.fixture(params=["dir", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[ObjectStore, Callable[[], dict[str, bytes]]]:
    """(a store, a function returning every raw object in it by name)."""
    if request.param == "dir":
        root = tmp_path / "bucket"

        def raw_dir() -> dict[str, bytes]:
            return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                    if p.is_file()}

        return DirStore(str(root)), raw_dir
    url = request.getfixturevalue("s3_url")
    env: S3Server = request.getfixturevalue("s3_env")
    bucket = parse_s3_url(url)[0]

    def raw_s3() -> dict[str, bytes]:
        client = env.client()
        listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                for o in listing}

    return _multipart_store(url), raw_s3


def test_encrypted_round_trip_hides_names_and_contents(
        backend: tuple[ObjectStore, Callable[[], dict[str, bytes]]], tmp_path: Path) -> None:
    inner, raw = backend
    key = keygen()
    store = EncryptedStore(inner, key)
    seg = store.segment_size
    values = {
        "repo/manifest.json": MARKER + b" manifest",
        "repo/empty": b"",
        "repo/one-segment": MARKER * (seg // len(MARKER)) + b"x" * (seg % len(MARKER)),
        "repo/objects/pack/pack-" + "ab" * 20 + ".idx": MARKER * 9000,
    }
    for k, v in values.items():
        store.put(k, v)
    big = MARKER * ((9 * MiB) // len(MARKER) + 1)  # multipart on S3, with these knobs
    store.put_file("repo/objects/pack/big.pack", _write(tmp_path / "big", big), sha256=_sha(big))
    values["repo/objects/pack/big.pack"] = big
    for k, v in values.items():
        assert store.get(k) == v, k
        assert store.stat(k) == Stat(len(v), _sha(v)), k
    assert store.stat("repo/missing") is None
    assert list(store.list("repo/objects/")) == sorted(
        (k, len(v)) for k, v in values.items() if k.startswith("repo/objects/"))

    objects = raw()
    assert len(objects) == len(values) + 1  # and the index
    assert INDEX_KEY in objects
    for name, blob in objects.items():
        assert "repo" not in name and "pack" not in name and "manifest" not in name
        assert MARKER not in blob and b"repo/" not in blob, name
    # A second store with the key reads everything back, names included.
    again = EncryptedStore(inner, key)
    assert dict(again.list("")) == {k: len(v) for k, v in values.items()}
    again.delete("repo/empty")
    assert "repo/empty" not in dict(EncryptedStore(inner, key).list("repo/"))
    with pytest.raises(NotFound):
        again.get("repo/empty")


def test_encrypted_ranges_fetch_only_their_segments(
        backend: tuple[ObjectStore, Callable[[], dict[str, bytes]]]) -> None:
    inner, _ = backend
    counting = Counting(inner)
    store = EncryptedStore(counting, keygen())
    seg = store.segment_size
    data = os.urandom(5 * seg + 1234)
    store.put("v", data)
    cases = [(0, 1), (0, seg), (seg - 1, seg + 1), (seg, 2 * seg), (3 * seg + 7, 5 * seg + 2),
             (5 * seg, 5 * seg + 1234), (5 * seg + 1233, None), (2 * seg, None),
             (len(data), None), (len(data) + 10, len(data) + 20), (7, 7), (0, None)]
    for start, end in cases:
        counting.calls.clear()
        assert store.get("v", start, end) == data[start:end], (start, end)
        gets = [c for n, c in counting.calls if n == "get"]
        assert len(gets) <= 1, (start, end, counting.calls)
        if gets and end is not None and end > start:
            _, lo, hi = gets[0]
            assert hi is not None and hi - lo <= ((end - start) // seg + 2) * (seg + OVERHEAD) + (
                HEADER_SIZE)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 700), start=st.integers(0, 720), length=st.none() | st.integers(0, 300))
def test_encrypted_ranges_property(tmp_path: Path, size: int, start: int,
                                   length: int | None) -> None:
    # A tiny segment size makes every boundary case cheap to reach.
    store = EncryptedStore(DirStore(str(tmp_path / "prop")), bytes(32), segment_size=64)
    data = hashlib.shake_256(str(size).encode()).digest(size) if size else b""
    store.put(f"v{size}", data)
    end = None if length is None else start + length
    assert store.get(f"v{size}", start, end) == data[start:end]
    assert store.stat(f"v{size}") == Stat(size, _sha(data))


def test_encrypted_range_into_a_full_final_segment(tmp_path: Path) -> None:
    """A value that fills its last segment exactly: a range that ends in that
    segment fetches the whole object, and cannot tell from the length alone
    that the segment is the final one."""
    store = EncryptedStore(DirStore(str(tmp_path / "b")), bytes(32), segment_size=64)
    data = os.urandom(384)
    store.put("v", data)
    assert store.get("v", 21, 321) == data[21:321]
    assert store.get("v", 330, 384) == data[330:384]
    assert store.get("v", 0, 384) == data


def test_encrypted_wrong_key_is_named(
        backend: tuple[ObjectStore, Callable[[], dict[str, bytes]]]) -> None:
    inner, _ = backend
    EncryptedStore(inner, keygen()).put("repo/manifest.json", b"secret")
    other = EncryptedStore(inner, keygen())
    with pytest.raises(WrongKeyError, match="encrypted with another key"):
        other.get("repo/manifest.json")
    with pytest.raises(WrongKeyError):
        list(other.list(""))
    with pytest.raises(WrongKeyError):  # and it writes nothing
        other.put("repo/manifest.json", b"mixed keys")


def test_encrypted_tampering_is_detected(tmp_path: Path) -> None:
    inner = DirStore(str(tmp_path / "b"))
    store = EncryptedStore(inner, keygen(), segment_size=1024)
    a, b = os.urandom(4000), os.urandom(4000)
    store.put("a", a)
    store.put("b", b)
    path_a = Path(inner.root) / store.inner_key("a")
    path_b = Path(inner.root) / store.inner_key("b")
    good_a, good_b = path_a.read_bytes(), path_b.read_bytes()
    step = 1024 + OVERHEAD

    # One flipped bit in segment 2: that segment fails, the others still read.
    blob = bytearray(good_a)
    blob[HEADER_SIZE + 2 * step + 40] ^= 0x10
    path_a.write_bytes(bytes(blob))
    with pytest.raises(TamperedError, match="segment 2 failed authentication"):
        store.get("a")
    with pytest.raises(TamperedError):
        store.get("a", 2100, 2200)
    assert store.get("a", 0, 2048) == a[:2048]
    assert store.get("a", 3072) == a[3072:]
    # (A DirStore records no digests, so stat cannot tell; over S3 it can:
    # test_encrypted_stat_notices_a_replaced_object.)

    # Swapped objects, swapped segments and a dropped last segment all fail.
    path_a.write_bytes(good_b)
    with pytest.raises(TamperedError):
        store.get("a")
    segs = [good_a[HEADER_SIZE + i * step:HEADER_SIZE + (i + 1) * step] for i in range(4)]
    path_a.write_bytes(good_a[:HEADER_SIZE] + segs[1] + segs[0] + segs[2] + segs[3])
    with pytest.raises(TamperedError):
        store.get("a", 0, 100)
    path_a.write_bytes(good_a[:HEADER_SIZE + 3 * step])
    with pytest.raises(TamperedError):
        store.get("a")
    path_a.write_bytes(good_a)
    assert store.get("a") == a
    path_b.write_bytes(b"garbage" * 10)
    with pytest.raises(StoreError, match="not a ketch-encrypted object"):
        store.get("b")


def test_encrypted_stat_notices_a_replaced_object(s3_url: str, s3_env: S3Server) -> None:
    store = EncryptedStore(S3Store(s3_url), keygen())
    data = os.urandom(1000)
    store.put("v", data)
    assert store.stat("v") == Stat(1000, _sha(data))
    bucket, hidden = parse_s3_url(s3_url)[0], store.inner_key("v")
    client = s3_env.client()
    blob = bytearray(client.get_object(Bucket=bucket, Key=hidden)["Body"].read())
    blob[-1] ^= 1
    client.put_object(Bucket=bucket, Key=hidden, Body=bytes(blob),
                      Metadata={"sha256": _sha(bytes(blob))})
    st = store.stat("v")
    assert st is not None and st.size == 1000 and st.checksum != _sha(data)
    with pytest.raises(TamperedError):
        store.get("v")


def test_encrypted_put_file_is_deterministic_and_checked(tmp_path: Path) -> None:
    """Equal files encrypt to equal bytes (so an interrupted upload can resume),
    and a file that is not what its sha256 says is never uploaded."""
    inner = DirStore(str(tmp_path / "b"))
    store = EncryptedStore(inner, keygen(), tmp_dir=str(tmp_path))
    data = os.urandom(300_000)
    path = _write(tmp_path / "f", data)
    store.put_file("p.pack", path, sha256=_sha(data))
    first = inner.get(store.inner_key("p.pack"))
    store.put_file("p.pack", path, sha256=_sha(data))
    assert inner.get(store.inner_key("p.pack")) == first
    store.put_file("q.pack", path, sha256=_sha(data))
    assert inner.get(store.inner_key("q.pack")) != first  # the name is bound in
    with pytest.raises(StoreError, match="does not match its sha256"):
        store.put_file("r.pack", path, sha256=_sha(b"else"))
    assert store.stat("r.pack") is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ketch-enc.")]


# -- key files ------------------------------------------------------------------------


def test_key_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "mirror.key")
    key = save_key(path)
    assert len(key) == 32 and load_key(path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Path(path).read_text().startswith("# ketch mirror key v1")
    with pytest.raises(KeyFileError, match="exists already"):
        save_key(path)
    assert load_key(path) == key

    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING):
        assert load_key(path) == key
    assert "accessible by group or others" in caplog.text
    with pytest.raises(KeyFileError, match="group or others"):
        load_key(path, strict=True)

    bad = tmp_path / "bad.key"
    for text in ("", "hello\n", "# ketch mirror key v1\n!!!\n", "# ketch mirror key v1\nAAAA\n"):
        bad.write_text(text)
        with pytest.raises(KeyFileError):
            load_key(str(bad))
    with pytest.raises(KeyFileError, match="cannot read"):
        load_key(str(tmp_path / "missing.key"))
    with pytest.raises(KeyFileError):
        EncryptedStore(DirStore(str(tmp_path)), b"short")


@pytest.mark.parametrize("wrap", ["cache", "retry"])
def test_wrapped_encrypted_store_writes_its_index_on_flush(tmp_path: Path, wrap: str) -> None:
    """flush() through a wrapper reaches the EncryptedStore under it, so the
    name index holds every key (a skipped flush would lose the ones batched)."""
    bucket = DirStore(str(tmp_path / "bucket"))
    key = keygen()
    enc = EncryptedStore(bucket, key, index_interval=3600)
    store: ObjectStore = (CachingStore(enc, str(tmp_path / "cache")) if wrap == "cache"
                          else RetryingStore(enc))
    for name in ("a", "b", "c"):
        store.put(name, name.encode())
    store.flush()
    fresh = EncryptedStore(bucket, key)
    assert [k for k, _ in fresh.list("")] == ["a", "b", "c"]


# -- CachingStore ---------------------------------------------------------------------


def test_caching_store_serves_idx_files_locally(tmp_path: Path) -> None:
    counting = Counting(DirStore(str(tmp_path / "b")))
    store = CachingStore(counting, str(tmp_path / "cache"))
    idx = os.urandom(10_000)
    store.put("r/pack-1.idx", idx)
    store.put("r/pack-1.pack", b"pack bytes")
    assert store.get("r/pack-1.idx", 100, 200) == idx[100:200]
    assert store.get("r/pack-1.idx", 9_000) == idx[9_000:]
    assert store.get("r/pack-1.idx") == idx
    assert counting.count("get") == 1
    assert store.get("r/pack-1.pack", 0, 4) == b"pack"
    assert store.get("r/pack-1.pack", 5) == b"bytes"
    assert counting.count("get") == 3  # packs are not cached
    store.put("r/pack-1.idx", b"new")  # a put through the cache replaces its copy
    assert store.get("r/pack-1.idx") == b"new"
    store.delete("r/pack-1.idx")
    with pytest.raises(NotFound):
        store.get("r/pack-1.idx")
    assert [k for k, _ in store.list("r/")] == ["r/pack-1.pack"]


def test_wrappers_say_where_the_store_is(tmp_path: Path) -> None:
    """A mirror read through wrappers names (and caches by) the store under them."""
    inner = DirStore(str(tmp_path / "store"))
    key = keygen()
    store = CachingStore(RetryingStore(EncryptedStore(inner, key)), str(tmp_path / "cache"))
    assert store.location() == inner.root
    assert S3Store("s3://bucket/some/prefix").location() == "s3://bucket/some/prefix"
