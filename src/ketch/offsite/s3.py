"""An ObjectStore in an S3 bucket (AWS, SeaweedFS, Ceph RGW, MinIO) over boto3.

    store = S3Store("s3://bucket/some/prefix", endpoint_url=None, region=None, profile=None)

Credentials are found the boto3 way (environment, shared config/credentials
profile, instance role); none are ever passed in code.  The endpoint is, in
order: the ``endpoint_url`` argument, ``$KETCH_S3_ENDPOINT``,
``$AWS_ENDPOINT_URL_S3``, ``$AWS_ENDPOINT_URL``.  (botocore reads the last two
itself only from 1.31.57 / boto3 1.28.57 on, so they are read here too.)

Uploads are verified, every one:

- Each request body carries its SHA-256 (S3 "additional checksums",
  ``ChecksumSHA256``), which the server checks before it stores anything
  (BadDigest otherwise).  The response's checksum, or else its ETag (the MD5
  of the body for unencrypted single-part objects and parts), is compared with
  ours.  A server that rejects additional checksums gets Content-MD5 instead
  (``checksums=False``, or switched automatically on the first refusal).
- Multipart uploads are completed with every part's checksum, the server's
  composite checksum (SHA-256 of the parts' SHA-256s, "-N") or multipart ETag
  (MD5 of the parts' MD5s, "-N") is checked, and a final HEAD checks the size
  and the recorded digest.
- The whole file's SHA-256 (hex) is recorded as metadata ``x-amz-meta-sha256``
  and is what ``stat()`` returns as ``Stat.checksum``; the local file is
  hashed while it is read, and an upload whose bytes do not match the
  caller's ``sha256`` is aborted.

Multipart uploads resume: a second ``put_file`` of the same key finds the
unfinished upload (``ListMultipartUploads`` with the key as prefix), lists its
parts and uploads only those missing or different (size, and checksum or MD5
ETag), so an interrupted push of a 1 GB pack does not start over.  Part sizes
follow from the file size alone, so a resumed run cuts the file the same way.
One writer per key at a time is assumed (the mirror pushes single-writer).

boto3 is imported when an S3Store is made, never by importing this module:
it takes most of a second, and local commands must not pay for it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ketch.errors import UsageError
from ketch.offsite.s3multipart import MiB, MultipartUploads, b64, etag_of
from ketch.offsite.store import (
    Advance,
    NotFound,
    ObjectStore,
    PreconditionFailed,
    Stat,
    StoreError,
    TransientError,
)

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 64 * MiB
# workers + 1 parts are in memory at once: 8 MiB keeps a push near 110 MB RSS.
PART_SIZE = 8 * MiB
WORKERS = 4

T = TypeVar("T")

# Error codes worth trying again: throttling and the server's own trouble.
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "RequestThrottled", "TooManyRequestsException", "RequestTimeout",
    "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable",
    "BadGateway", "GatewayTimeout",
})  # fmt: skip
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# A conditional write that lost: 412, or AWS's 409 for two at the same moment.
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed", "403",
})  # fmt: skip


class AuthError(StoreError):
    """The store refused our credentials or denied the request."""


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without surrounding slashes)."""
    if not url.startswith("s3://"):
        raise UsageError(f"not an s3:// URL: {url}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise UsageError(f"no bucket in {url}")
    return bucket, prefix.strip("/")


class S3Store(MultipartUploads, ObjectStore):
    """``s3://bucket/prefix`` as an ObjectStore; see the module doc.

    The keyword-only knobs after ``profile`` are for tests and tuning:
    ``multipart_threshold`` (files above it go multipart), ``part_size``
    (grown when a file would need more than 10,000 parts), ``workers`` (parts
    in flight), ``page_size`` (keys per LIST request), ``checksums`` (send
    SHA-256 additional checksums; False sends Content-MD5), ``max_attempts``
    (botocore's own tries per request; the default 1 leaves retrying to
    RetryingStore, so that one layer retries, not 3 tries under each of its 5).
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        workers: int = WORKERS,
        page_size: int = 1000,
        checksums: bool = True,
        max_attempts: int = 1,
    ) -> None:
        self.bucket, prefix = parse_s3_url(url)
        self.root = prefix + "/" if prefix else ""
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.workers = max(1, workers)
        self.page_size = page_size
        self.checksums = checksums
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("KETCH_S3_ENDPOINT")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        # SigV4 needs a region; S3-compatible servers accept any, and AWS
        # itself redirects, so us-east-1 is the safe default for an endpoint.
        if region is None and self.endpoint_url and not os.environ.get("AWS_DEFAULT_REGION"):
            region = "us-east-1"

        import botocore.config  # type: ignore[import-untyped]
        import botocore.exceptions  # type: ignore[import-untyped]

        self._exc = botocore.exceptions
        s3_cfg: dict[str, str] = {}
        if self.endpoint_url:
            # Ceph and SeaweedFS behind a plain host name have no wildcard
            # DNS for virtual-host-style bucket names.
            s3_cfg["addressing_style"] = "path"
        config = botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": max(1, max_attempts)},
            # Reading in place runs 16 ranged GETs and 8 idx GETs at once (s3read).
            max_pool_connections=max(24, self.workers * 2),
            connect_timeout=10,
            read_timeout=60,
            s3=s3_cfg,
        )
        self._client_args = (url, profile, region, config)
        self.client: Any = self._new_client()

    def _new_client(self) -> Any:
        import boto3  # type: ignore[import-untyped]

        url, profile, region, config = self._client_args
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
            return session.client("s3", endpoint_url=self.endpoint_url, config=config)
        except self._exc.BotoCoreError as e:
            raise StoreError(f"{url}: cannot set up the S3 client: {_one_line(e)}") from None

    def forked(self) -> None:
        # The parent's connections are the parent's: a child sharing a socket
        # would mix its requests with the parent's.
        self.client = self._new_client()

    def __repr__(self) -> str:
        return f"S3Store('{self.location()}')"

    def location(self) -> str:
        return f"s3://{self.bucket}/{self.root.rstrip('/')}".rstrip("/")

    # -- plumbing ------------------------------------------------------------

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise StoreError(f"bad key: {key!r}")
        return self.root + key

    def _where(self, full: str) -> str:
        return f"s3://{self.bucket}/{full}"

    def _error(self, e: Exception, what: str) -> StoreError:
        """One StoreError for a boto3 failure: one line, no traceback, no secrets."""
        exc = self._exc
        if isinstance(e, StoreError):
            return e
        if isinstance(e, exc.ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", "")) or "?"
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            msg = _one_line(err.get("Message") or "")
            text = f"{what}: {code}" + (f" ({msg})" if msg else "")
            if code in _CONFLICT_CODES or status == 412:
                return PreconditionFailed(text)
            if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchBucket"):
                return NotFound(f"{what}: not found")
            if code in _TRANSIENT_CODES or status == 429 or status >= 500:
                return TransientError(text)
            if code in _AUTH_CODES:
                return AuthError(text)
            return StoreError(text)
        if isinstance(e, exc.NoCredentialsError):
            return AuthError(f"{what}: no S3 credentials (environment, profile or instance role)")
        if isinstance(e, (exc.ConnectionError, exc.HTTPClientError, exc.IncompleteReadError)):
            return TransientError(f"{what}: {_one_line(e)}")
        if isinstance(e, exc.BotoCoreError):
            return StoreError(f"{what}: {_one_line(e)}")
        if isinstance(e, OSError):
            # urllib3 errors escaping a response body read on older botocore.
            return TransientError(f"{what}: {_one_line(e)}")
        raise e

    def _call(self, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except Exception as e:
            raise self._error(e, what) from None

    def _refused_checksum(self, e: StoreError) -> bool:
        """Does this error say the server cannot do additional checksums?"""
        text = str(e).lower()
        refused = ("notimplemented", "invalidargument", "invalidrequest", "unsupported")
        return "checksum" in text and any(c in text for c in refused)

    def _with_checksum_fallback(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except StoreError as e:
            if not (self.checksums and self._refused_checksum(e)):
                raise
            log.info("%s: no additional checksums, falling back to Content-MD5", self)
            self.checksums = False
            return fn()

    # -- reads -----------------------------------------------------------------

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        full = self._key(key)
        if end is not None and end <= start:
            if self.stat(key) is None:
                raise NotFound(f"{self._where(full)}: not found")
            return b""
        kwargs: dict[str, Any] = {"Key": full}
        if start or end is not None:
            # HTTP ranges are inclusive at both ends.
            kwargs["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        what = self._where(full)
        try:
            resp = self.client.get_object(Bucket=self.bucket, **kwargs)
            data: bytes = resp["Body"].read()
        except Exception as e:
            if isinstance(e, self._exc.ClientError) and (
                e.response.get("Error", {}).get("Code") == "InvalidRange"
            ):
                return b""  # start at or past the end, as a file read would
            raise self._error(e, what) from None
        expected = None if end is None else end - start
        if expected is not None and len(data) > expected:
            raise StoreError(f"{what}: server sent {len(data)} bytes for a {expected}-byte range")
        return data

    def get_tagged(self, key: str) -> tuple[bytes, str]:
        full = self._key(key)
        what = self._where(full)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=full)
            data: bytes = resp["Body"].read()
        except Exception as e:
            raise self._error(e, what) from None
        return data, str(resp.get("ETag") or "")

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        full = self._key(key)
        what = self._where(full)
        digest = hashlib.sha256(data).digest()
        cond = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}

        def attempt() -> dict[str, Any]:
            return self._call(what, self.client.put_object, Key=full, Body=data,
                              Metadata={"sha256": digest.hex()},
                              **self._body_checksum(data, digest), **cond)

        resp = self._with_checksum_fallback(attempt)
        self._check_body(what, resp, digest, data)
        return str(resp.get("ETag") or "")

    def stat(self, key: str) -> Stat | None:
        full = self._key(key)
        try:
            resp = self._call(self._where(full), self.client.head_object, Key=full,
                              ChecksumMode="ENABLED")
        except NotFound:
            return None
        checksum = (resp.get("Metadata") or {}).get("sha256")
        if checksum is None:
            # A single-part upload's own SHA-256 is the object's; a composite
            # ("...-N") is a hash of hashes and says nothing about the bytes.
            native = resp.get("ChecksumSHA256")
            if native and "-" not in native:
                checksum = base64.b64decode(native).hex()
        return Stat(int(resp["ContentLength"]), checksum)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        full = self.root + prefix
        what = self._where(full) + "*"
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield obj["Key"][len(self.root):], int(obj["Size"])
        except Exception as e:
            raise self._error(e, what) from None

    # -- writes ----------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        self._put_object(self._key(key), data, hashlib.sha256(data).hexdigest(), None)

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._call(self._where(full), self.client.delete_object, Key=full)

    def put_file(self, key: str, path: str, *, sha256: str, storage_class: str | None = None,
                 advance: Advance | None = None) -> None:
        full = self._key(key)
        size = _file_size(path)
        if size <= self.multipart_threshold:
            with open(path, "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise StoreError(f"{path}: does not match its sha256 {sha256[:12]}… (changed?)")
            self._put_object(full, data, sha256, storage_class)
            if advance is not None:
                advance(size)
            return
        self._put_multipart(full, path, size, sha256, storage_class, advance, resume=True)

    def put_file_once(self, key: str, path: str, *, sha256: str,
                      advance: Advance | None = None) -> None:
        full = self._key(key)
        size = _file_size(path)
        if size > self.multipart_threshold:
            # Not conditional: a CompleteMultipartUpload with If-None-Match is
            # not what every S3-compatible server takes.
            self.put_file(key, path, sha256=sha256, advance=advance)
            return
        what = self._where(full)
        try:
            with open(path, "rb") as f:
                # Streamed, not read whole: a save has several packs uploading at once.
                sha, md5 = hashlib.sha256(), hashlib.md5()
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
                    md5.update(block)
                digest = sha.digest()
                if digest.hex() != sha256:
                    raise StoreError(f"{path}: does not match its sha256 {sha256[:12]}… "
                                     "(changed?)")

                def attempt() -> dict[str, Any]:
                    f.seek(0)
                    check = ({"ChecksumSHA256": b64(digest)} if self.checksums
                             else {"ContentMD5": b64(md5.digest())})
                    return self._call(what, self.client.put_object, Key=full, Body=f,
                                      ContentLength=size, Metadata={"sha256": sha256},
                                      IfNoneMatch="*", **check)

                resp = self._with_checksum_fallback(attempt)
            self._check_body(what, resp, digest, b"", md5.digest())
        except PreconditionFailed:
            # Named by its content: the same bytes, from an earlier try.
            st = self.stat(key)
            if st is None or st.size != size or (st.checksum is not None
                                                 and st.checksum != sha256):
                raise StoreError(f"{self._where(full)}: already there with other "
                                 "content") from None
        if advance is not None:
            advance(size)

    def _put_object(self, full: str, data: bytes, sha256: str, storage_class: str | None,
                    cond: dict[str, str] | None = None, digest: bytes | None = None) -> None:
        what = self._where(full)
        # The caller's, when it has just computed it: a pack is hashed once, not thrice.
        digest = digest or hashlib.sha256(data).digest()

        def attempt() -> dict[str, Any]:
            kwargs: dict[str, Any] = {"Key": full, "Body": data, "Metadata": {"sha256": sha256},
                                      **(cond or {})}
            kwargs.update(self._body_checksum(data, digest))
            if storage_class:
                kwargs["StorageClass"] = storage_class
            return self._call(what, self.client.put_object, **kwargs)

        resp = self._with_checksum_fallback(attempt)
        self._check_body(what, resp, digest, data)

    def _body_checksum(self, data: bytes, digest: bytes) -> dict[str, str]:
        """What makes the server check the body: SHA-256, or MD5 without checksums."""
        if self.checksums:
            return {"ChecksumSHA256": b64(digest)}
        return {"ContentMD5": b64(hashlib.md5(data).digest())}

    def _check_body(self, what: str, resp: dict[str, Any], digest: bytes, data: bytes,
                    md5: bytes | None = None) -> bytes | None:
        """Did the server store these bytes?  Its checksum, else its MD5 ETag, says.
        Returns the MD5 when it had to be computed (None when the checksum sufficed)."""
        native = resp.get("ChecksumSHA256")
        if native:
            if native != b64(digest):
                raise StoreError(f"{what}: server checksum {native} differs from ours")
            return md5
        etag = etag_of(resp.get("ETag"))
        md5 = md5 or hashlib.md5(data).digest()
        # An ETag that is not an MD5 (SSE-KMS, some gateways) cannot be checked;
        # the Content-MD5/checksum header was checked by the server already.
        if len(etag) == 32 and etag != md5.hex():
            raise StoreError(f"{what}: server ETag {etag} is not the MD5 of what we sent")
        return md5

def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError as e:
        raise StoreError(f"{path}: {e.strerror}") from None


def _one_line(e: object) -> str:
    text = " ".join(str(e).split())
    return text[:300]
