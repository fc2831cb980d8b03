"""Multipart uploads of S3Store: parts sent in parallel, resumed, checked.

A file above the multipart threshold goes up in parts of a size that follows
from the file size alone, so that a second ``put_file`` of the same key finds
the unfinished upload, keeps the parts that match (size, and checksum or MD5
ETag) and sends only the rest.  Each part carries its SHA-256 (or Content-MD5),
and the completed upload's composite checksum or multipart ETag is checked.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

from ketch.offsite.store import Advance, NotFound, StoreError

log = logging.getLogger("ketch.offsite.s3")

MiB = 1 << 20
MAX_PARTS = 10_000  # S3's limit

T = TypeVar("T")


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def etag_of(value: object) -> str:
    return str(value or "").strip('"').lower()


@dataclass
class _Part:
    number: int
    size: int
    etag: str
    sha256: bytes  # raw digest
    md5: bytes | None  # computed only where it is the check


# `list` is a method of S3Store, so inside the class the builtin needs a name.
_Parts = list[_Part]


@dataclass
class _Existing:
    size: int
    etag: str
    checksum: str | None

class MultipartUploads:
    """The multipart half of S3Store, mixed into it; what it uses of the store
    is declared here and defined there."""

    client: Any
    bucket: str
    checksums: bool
    workers: int
    part_size: int

    def _where(self, full: str) -> str:
        raise NotImplementedError

    def _error(self, e: Exception, what: str) -> StoreError:
        raise NotImplementedError

    def _call(self, what: str, fn: Callable[..., T], **kwargs: Any) -> T:
        raise NotImplementedError

    def _with_checksum_fallback(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    def _check_body(self, what: str, resp: dict[str, Any], digest: bytes, data: bytes,
                    md5: bytes | None = None) -> bytes | None:
        raise NotImplementedError

    def _part_size_for(self, size: int) -> int:
        """The configured size, grown in whole MiB past 160 GB (10,000 parts).

        A function of the size alone, so a resumed upload cuts the same parts."""
        needed = -(-size // MAX_PARTS)
        if needed <= self.part_size:
            return self.part_size
        return -(-needed // MiB) * MiB

    def _put_multipart(self, full: str, path: str, size: int, sha256: str,
                       storage_class: str | None, advance: Advance | None, *, resume: bool) -> None:
        what = self._where(full)
        part_size = self._part_size_for(size)
        found = self._find_upload(full) if resume else None
        if found is None:
            upload_id = self._create_upload(full, sha256, storage_class)
            existing: dict[int, _Existing] = {}
        else:
            upload_id, existing = found
            log.info("%s: resuming upload with %d parts present", what, len(existing))
        parts = self._upload_parts(full, upload_id, path, size, part_size, sha256, existing,
                                   advance)
        self._complete(full, upload_id, parts)
        head = self._call(what, self.client.head_object, Key=full)
        recorded = (head.get("Metadata") or {}).get("sha256")
        if int(head["ContentLength"]) != size:
            raise StoreError(f"{what}: {head['ContentLength']} bytes stored, {size} sent")
        if recorded != sha256:
            # The upload we resumed was begun for other bytes under this key
            # (its metadata is fixed at creation): the parts were re-sent and
            # are right, but the record is not.  Start over, without resuming.
            if not resume:
                raise StoreError(f"{what}: recorded sha256 {recorded} is not {sha256}")
            log.warning("%s: resumed a stale upload; uploading again", what)
            self._put_multipart(full, path, size, sha256, storage_class, advance, resume=False)

    def _create_upload(self, full: str, sha256: str, storage_class: str | None) -> str:
        def attempt() -> dict[str, Any]:
            kwargs: dict[str, Any] = {"Key": full, "Metadata": {"sha256": sha256}}
            if self.checksums:
                kwargs["ChecksumAlgorithm"] = "SHA256"
            if storage_class:
                kwargs["StorageClass"] = storage_class
            return self._call(self._where(full), self.client.create_multipart_upload, **kwargs)

        return str(self._with_checksum_fallback(attempt)["UploadId"])

    def _find_upload(self, full: str) -> tuple[str, dict[int, _Existing]] | None:
        """The newest unfinished upload of exactly this key and its parts; older
        ones are aborted (they would only cost storage)."""
        what = self._where(full)
        uploads: builtins.list[tuple[Any, str]] = []
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                for u in page.get("Uploads", ()):
                    if u["Key"] == full:  # the prefix also matches longer keys
                        uploads.append((u.get("Initiated"), u["UploadId"]))
        except Exception as e:
            raise self._error(e, what) from None
        if not uploads:
            return None
        uploads.sort(key=lambda u: (u[0] is not None, u[0]))
        upload_id = uploads[-1][1]
        for _, stale in uploads[:-1]:
            self.abort(full, stale)
        existing: dict[int, _Existing] = {}
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=full, UploadId=upload_id
            )
            for page in pages:
                for p in page.get("Parts", ()):
                    existing[int(p["PartNumber"])] = _Existing(
                        int(p["Size"]), etag_of(p.get("ETag")), p.get("ChecksumSHA256"))
        except Exception as e:
            err = self._error(e, what)
            if isinstance(err, NotFound):  # completed or aborted meanwhile
                return None
            raise err from None
        return upload_id, existing

    def abort(self, full: str, upload_id: str) -> None:
        """Abort one multipart upload (by full key); a missing one is fine."""
        try:
            self._call(self._where(full), self.client.abort_multipart_upload, Key=full,
                       UploadId=upload_id)
        except NotFound:
            pass

    def _upload_parts(self, full: str, upload_id: str, path: str, size: int, part_size: int,
                      sha256: str, existing: dict[int, _Existing],
                      advance: Advance | None) -> _Parts:
        """Send the parts that are not there yet, `workers` at a time.

        This thread reads the file in order (hashing the whole of it) and
        calls `advance`; the pool only hashes and sends parts.  At most
        `workers` parts are held in memory."""
        done: _Parts = []
        whole = hashlib.sha256()
        number = 0
        with open(path, "rb") as f, ThreadPoolExecutor(self.workers) as pool:
            inflight: set[Future[_Part]] = set()
            try:
                while True:
                    data = f.read(part_size)
                    if not data:
                        break
                    number += 1
                    whole.update(data)
                    reused = self._reusable(existing.get(number), data)
                    if reused is not None:
                        done.append(_Part(number, len(data), *reused))
                        continue
                    while len(inflight) >= self.workers:
                        inflight = self._collect(inflight, done, advance)
                    inflight.add(pool.submit(self._send_part, full, upload_id, number, data))
                while inflight:
                    inflight = self._collect(inflight, done, advance)
            except BaseException:
                for fut in inflight:
                    fut.cancel()
                raise
        if whole.hexdigest() != sha256 or sum(p.size for p in done) != size:
            self.abort(full, upload_id)
            raise StoreError(f"{path}: does not match its sha256 {sha256[:12]}… (changed?)")
        return sorted(done, key=lambda p: p.number)

    def _collect(self, inflight: set[Future[_Part]], done: _Parts,
                 advance: Advance | None) -> set[Future[_Part]]:
        finished, pending = wait(inflight, return_when=FIRST_COMPLETED)
        for fut in finished:
            part = fut.result()  # re-raises a part's failure here
            done.append(part)
            if advance is not None:
                advance(part.size)
        return pending

    def _reusable(self, have: _Existing | None, data: bytes) -> tuple[str, bytes, bytes] | None:
        """(etag, sha256, md5) if the part already uploaded holds exactly `data`."""
        if have is None or have.size != len(data):
            return None
        digest = hashlib.sha256(data).digest()
        md5 = hashlib.md5(data).digest()
        if have.checksum:
            ok = have.checksum == b64(digest)
        else:
            ok = have.etag == md5.hex()
        return (have.etag, digest, md5) if ok else None

    def _send_part(self, full: str, upload_id: str, number: int, data: bytes) -> _Part:
        what = f"{self._where(full)} part {number}"
        digest = hashlib.sha256(data).digest()
        # MD5 only where it is the check: without checksums, or when the server
        # does not echo the SHA-256 (a second pass over every byte otherwise).
        md5 = None if self.checksums else hashlib.md5(data).digest()
        kwargs: dict[str, Any] = {"Key": full, "UploadId": upload_id, "PartNumber": number,
                                  "Body": data}
        # The upload was created with ChecksumAlgorithm=SHA256 iff checksums
        # is on, and then every part must carry one.
        kwargs.update({"ChecksumSHA256": b64(digest)} if md5 is None
                      else {"ContentMD5": b64(md5)})
        resp = self._call(what, self.client.upload_part, **kwargs)
        md5 = self._check_body(what, resp, digest, data, md5)
        return _Part(number, len(data), etag_of(resp.get("ETag")), digest, md5)

    def _complete(self, full: str, upload_id: str, parts: _Parts) -> None:
        what = self._where(full)
        listed: builtins.list[dict[str, Any]] = []
        for p in parts:
            entry: dict[str, Any] = {"PartNumber": p.number, "ETag": f'"{p.etag}"'}
            if self.checksums:
                entry["ChecksumSHA256"] = b64(p.sha256)
            listed.append(entry)
        resp = self._call(what, self.client.complete_multipart_upload, Key=full,
                          UploadId=upload_id, MultipartUpload={"Parts": listed})
        n = len(parts)
        native = resp.get("ChecksumSHA256")
        if native:
            composite = b64(hashlib.sha256(b"".join(p.sha256 for p in parts)).digest())
            if native.split("-")[0] != composite:
                raise StoreError(f"{what}: composite checksum {native} is not {composite}-{n}")
            return
        etag = etag_of(resp.get("ETag"))
        if any(p.md5 is None for p in parts):
            return  # each part's SHA-256 was confirmed by the server as it arrived
        expected = hashlib.md5(b"".join(p.md5 for p in parts if p.md5)).hexdigest() + f"-{n}"
        if etag.endswith(f"-{n}") and len(etag) == len(expected) and etag != expected:
            raise StoreError(f"{what}: multipart ETag {etag} is not {expected}")
