"""Per-machine credentials (issue 14, item 3), at the store level, against a real
SeaweedFS whose identities are restricted the way docs/s3-credentials.md says.

One bucket, ``ketch``, holds a repository per machine under ``repos/NAME/``.
A machine's key carries the machine policy (tests/services/seaweedfs.py
``machine_policy``, word for word the one in the docs): it reads and writes
objects under its own prefix, lists only there, and has no s3:DeleteObject.
The server's key (prune, gc) carries the server policy, which adds
s3:DeleteObject over all of ``repos/``; the owner ``test`` is Admin.

What this shows, on SeaweedFS 4.48:

- a machine key creates packs (single PUT and multipart), replaces its
  manifest (plainly, and by compare-and-swap with If-None-Match / If-Match,
  412 on a stale ETag), and reads and lists its own prefix;
- it cannot delete there (DeleteObject and DeleteObjects are refused, the
  object stays), and cannot read, write, list or delete under another
  machine's prefix, the bucket's root, or a prefix that merely starts with
  its name (``repos/m10`` for ``repos/m1``), nor copy from them, nor change
  the bucket;
- on a versioned bucket the manifests it replaced stay, out of its reach
  (no reading or deleting old versions, no suspending versioning), and the
  owner puts one back;
- the server key and the owner can delete; the server key only under ``repos/``.

What SeaweedFS cannot do, pinned here so that a change shows up:

- its own ``actions`` cannot say "write but not delete": ``Write`` (even
  scoped, ``Write:bucket/prefix/*``) allows DeleteObject.  Only an attached
  IAM policy can (or a bucket policy's Deny), which is what the machine key uses.
- it never sets the condition keys ``s3:if-none-match``, ``s3:if-match`` and
  ``s3:ObjectCreationOperation``: the AWS Deny that requires conditional
  writes (the docs' bucket policy) never applies, so a plain overwrite goes
  through, and the same Deny without the ``s3:ObjectCreationOperation`` part
  refuses every write, conditional or not.  So "a machine cannot overwrite a
  pack" is enforced on AWS by that bucket policy, and on SeaweedFS only by
  ketch itself sending If-None-Match.

The machine key overwriting its own manifest (it must, to move its refs) is
allowed on both; the docs recommend bucket versioning for that.

The server is started with a machine's key in ``$AWS_ACCESS_KEY_ID``: weed
would make an Admin of it, and the fixture must keep it out of weed's
environment (every "cannot" below fails otherwise).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.offsite.s3 import AuthError, S3Store
from ketch.offsite.store import NotFound
from tests.conftest import RunKetch
from tests.offsite.conftest import isolate_aws
from tests.services.seaweedfs import (
    OWNER,
    REGION,
    S3Identity,
    SeaweedServer,
    machine_policy,
    required_weed,
    server_policy,
)

BUCKET = "ketch"
VERSIONED = "ketch-versioned"
WITH_POLICY = "ketch-policy"
M1 = S3Identity.machine("m1", bucket=BUCKET, prefix="repos/m1")
M2 = S3Identity.machine("m2", bucket=BUCKET, prefix="repos/m2")
SERVER = S3Identity.server("server", bucket=BUCKET, prefix="repos")
# SeaweedFS's own actions, scoped to a prefix: the closest they come.
LEGACY = S3Identity("legacy", "legacy-key", "legacy-secret", actions=(
    f"Read:{BUCKET}/repos/legacy/*", f"Write:{BUCKET}/repos/legacy/*",
    f"List:{BUCKET}/repos/legacy/*"))
# A machine on a bucket with versioning on.
MV = S3Identity.machine("mv", bucket=VERSIONED, prefix="repos/mv")
# SeaweedFS actions on a bucket whose bucket policy denies this identity deletes.
LEGACY_BP = S3Identity("legacy-bp", "legacy-bp-key", "legacy-bp-secret", actions=(
    f"Read:{WITH_POLICY}/repos/lb/*", f"Write:{WITH_POLICY}/repos/lb/*",
    f"List:{WITH_POLICY}/repos/lb/*"))


# The AWS way to make a machine send If-None-Match on its packs (the docs' bucket
# policy has it), here as an identity policy; and the same without the
# multipart exemption.  SeaweedFS evaluates neither as AWS does.
def _packs_only_if_absent(name: str, condition: dict[str, Any]) -> S3Identity:
    return S3Identity(name, f"{name}-key", f"{name}-secret", policy={
        "Version": "2012-10-17",
        "Statement": [
            *machine_policy(BUCKET, f"repos/{name}")["Statement"],
            {
                "Sid": "PacksOnlyIfAbsent",
                "Effect": "Deny",
                "Action": "s3:PutObject",
                "Resource": f"arn:aws:s3:::{BUCKET}/repos/{name}/objects/*",
                "Condition": condition,
            },
        ],
    })


STRICT = _packs_only_if_absent("strict", {"Null": {"s3:if-none-match": "true"},
                                          "Bool": {"s3:ObjectCreationOperation": "true"}})
STRICTER = _packs_only_if_absent("stricter", {"Null": {"s3:if-none-match": "true"}})

DOCS = Path(__file__).resolve().parents[2] / "docs" / "s3-credentials.md"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    exe = required_weed()
    with pytest.MonkeyPatch.context() as mp:
        # weed would make an Admin of a key in its environment (module doc).
        mp.setenv("AWS_ACCESS_KEY_ID", M1.access_key)
        mp.setenv("AWS_SECRET_ACCESS_KEY", M1.secret_key)
        server = SeaweedServer.start(tmp_path_factory.mktemp("weed-iam"), exe,
                                     identities=[M1, M2, SERVER, LEGACY, STRICT, STRICTER, MV,
                                                 LEGACY_BP])
    with server:
        owner = _client(server, OWNER)
        for bucket in (BUCKET, VERSIONED, WITH_POLICY):
            owner.create_bucket(Bucket=bucket)
        owner.put_bucket_versioning(Bucket=VERSIONED,
                                    VersioningConfiguration={"Status": "Enabled"})
        yield server


@pytest.fixture
def stores(weed: SeaweedServer, monkeypatch: pytest.MonkeyPatch,
           tmp_path_factory: pytest.TempPathFactory) -> Stores:
    isolate_aws(monkeypatch, tmp_path_factory)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return Stores(weed, monkeypatch)


def _client(weed: SeaweedServer, who: S3Identity) -> Any:
    """A raw boto3 client as *who*, for what S3Store does not do (yet): CAS,
    multipart by hand, batch delete, bucket calls."""
    import boto3  # type: ignore[import-untyped]
    import botocore.config  # type: ignore[import-untyped]

    return boto3.client(
        "s3", endpoint_url=weed.endpoint, region_name=REGION,
        aws_access_key_id=who.access_key, aws_secret_access_key=who.secret_key,
        config=botocore.config.Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1}))


class Stores:
    """S3Stores as one identity or another, credentials from the environment
    as in real use (S3Store reads them when it is made)."""

    def __init__(self, weed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.weed = weed
        self.monkeypatch = monkeypatch
        self.owner_client = self.client(OWNER)

    def store(self, who: S3Identity, prefix: str, **kwargs: Any) -> S3Store:
        self.monkeypatch.setenv("AWS_ACCESS_KEY_ID", who.access_key)
        self.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", who.secret_key)
        return S3Store(f"s3://{BUCKET}/{prefix}", endpoint_url=self.weed.endpoint, **kwargs)

    def client(self, who: S3Identity) -> Any:
        return _client(self.weed, who)

    def owner_keys(self, prefix: str) -> list[str]:
        resp = self.owner_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for o in resp.get("Contents", ())]


def _status(e: Exception) -> int:
    return int(e.response["ResponseMetadata"]["HTTPStatusCode"])  # type: ignore[attr-defined]


def _write(path: Path, size: int, seed: bytes) -> str:
    import hashlib

    data = (seed * (size // len(seed) + 1))[:size]
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


# -- what a machine key can do ---------------------------------------------------


def test_machine_writes_reads_and_lists_its_repository(stores: Stores, tmp_path: Path) -> None:
    m1 = stores.store(M1, "repos/m1")
    pack = tmp_path / "pack"
    digest = _write(pack, 4096, b"pack bytes ")
    m1.put_file("objects/pack/pack-a.pack", str(pack), sha256=digest)
    m1.put("objects/pack/pack-a.idx", b"idx bytes")
    m1.put("manifest.json", b'{"v": 1}')
    m1.put("manifest.json", b'{"v": 2}')  # replaced whole, as a mirror push does

    assert m1.get("manifest.json") == b'{"v": 2}'
    assert m1.get("objects/pack/pack-a.pack", 0, 4) == b"pack"
    st = m1.stat("objects/pack/pack-a.pack")
    assert st is not None and (st.size, st.checksum) == (4096, digest)
    assert m1.stat("objects/pack/pack-missing.pack") is None
    assert [k for k, _ in m1.list("objects/pack/")] == [
        "objects/pack/pack-a.idx", "objects/pack/pack-a.pack"]
    assert "manifest.json" in dict(m1.list(""))


def test_machine_multipart_upload_and_resume_listing(stores: Stores, tmp_path: Path) -> None:
    """A pack above the threshold goes multipart: create, parts, complete (all
    s3:PutObject), after the resume lookup (ListMultipartUploads, ListParts)."""
    m1 = stores.store(M1, "repos/m1", multipart_threshold=5 * MiB, part_size=5 * MiB)
    pack = tmp_path / "big.pack"
    digest = _write(pack, 6 * MiB, b"multipart ")
    m1.put_file("objects/pack/pack-big.pack", str(pack), sha256=digest)
    st = m1.stat("objects/pack/pack-big.pack")
    assert st is not None and (st.size, st.checksum) == (6 * MiB, digest)

    # An unfinished upload is found again (the resume path) and can be dropped.
    c = stores.client(M1)
    key = "repos/m1/objects/pack/pack-unfinished.pack"
    up = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    c.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=1, Body=b"x" * (5 * MiB))
    found = c.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
    assert [u["UploadId"] for u in found] == [up]
    assert [p["PartNumber"] for p in c.list_parts(Bucket=BUCKET, Key=key, UploadId=up)["Parts"]] \
        == [1]
    c.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up)


def test_machine_moves_its_manifest_by_compare_and_swap(stores: Stores) -> None:
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

    c = stores.client(M1)
    key = "repos/m1/cas/manifest.json"
    first = c.put_object(Bucket=BUCKET, Key=key, Body=b"1", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as created:
        c.put_object(Bucket=BUCKET, Key=key, Body=b"other", IfNoneMatch="*")
    assert _status(created.value) == 412
    second = c.put_object(Bucket=BUCKET, Key=key, Body=b"2", IfMatch=first)["ETag"]
    with pytest.raises(ClientError) as stale:
        c.put_object(Bucket=BUCKET, Key=key, Body=b"3", IfMatch=first)
    assert _status(stale.value) == 412
    assert stale.value.response["Error"]["Code"] == "PreconditionFailed"
    body = c.get_object(Bucket=BUCKET, Key=key, IfMatch=second)["Body"].read()
    assert body == b"2"


# -- what it cannot ---------------------------------------------------------------


def test_machine_cannot_delete_in_its_own_repository(stores: Stores) -> None:
    m1 = stores.store(M1, "repos/m1")
    m1.put("objects/pack/pack-keep.pack", b"keep")
    m1.put("manifest.json", b"{}")
    for key in ("objects/pack/pack-keep.pack", "manifest.json"):
        with pytest.raises(AuthError, match="AccessDenied"):
            m1.delete(key)
    # The batch call is refused key by key, inside a 200 answer.
    resp = stores.client(M1).delete_objects(Bucket=BUCKET, Delete={"Objects": [
        {"Key": "repos/m1/objects/pack/pack-keep.pack"}, {"Key": "repos/m1/manifest.json"}]})
    assert sorted((e["Key"], e["Code"]) for e in resp.get("Errors", ())) == [
        ("repos/m1/manifest.json", "AccessDenied"),
        ("repos/m1/objects/pack/pack-keep.pack", "AccessDenied")]
    assert not resp.get("Deleted")
    assert m1.get("objects/pack/pack-keep.pack") == b"keep"
    assert m1.get("manifest.json") == b"{}"


@pytest.mark.parametrize("prefix", ["repos/m2", "repos/m10", "repos", ""])
def test_machine_cannot_touch_another_prefix(stores: Stores, prefix: str) -> None:
    # The other repository's manifest, written by its own machine where there is one.
    writer = M2 if prefix == "repos/m2" else OWNER
    stores.store(writer, prefix).put("manifest.json", b"someone else's")
    other = stores.store(M1, prefix)
    with pytest.raises(AuthError):
        other.get("manifest.json")
    with pytest.raises(AuthError):
        other.stat("manifest.json")
    with pytest.raises(AuthError):
        other.put("manifest.json", b"evil")
    with pytest.raises(AuthError):
        other.put("objects/pack/pack-evil.pack", b"evil")
    with pytest.raises(AuthError):
        other.delete("manifest.json")
    with pytest.raises(AuthError):
        list(other.list(""))
    assert stores.store(OWNER, prefix).get("manifest.json") == b"someone else's"
    assert not [k for k in stores.owner_keys(prefix) if k.endswith("pack-evil.pack")]


def test_machine_cannot_copy_another_machines_objects_into_its_own(stores: Stores) -> None:
    from botocore.exceptions import ClientError

    stores.store(M2, "repos/m2").put("objects/pack/pack-m2.pack", b"m2 data")
    with pytest.raises(ClientError) as denied:
        stores.client(M1).copy_object(
            Bucket=BUCKET, Key="repos/m1/stolen",
            CopySource={"Bucket": BUCKET, "Key": "repos/m2/objects/pack/pack-m2.pack"})
    assert _status(denied.value) == 403


def test_machine_cannot_change_the_bucket(stores: Stores) -> None:
    """No bucket-level writes: policy, versioning, deleting the bucket."""
    from botocore.exceptions import ClientError

    c = stores.client(M1)
    calls = [
        lambda: c.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps(machine_policy(BUCKET, ""))),
        lambda: c.put_bucket_versioning(Bucket=BUCKET,
                                        VersioningConfiguration={"Status": "Suspended"}),
        lambda: c.delete_bucket(Bucket=BUCKET),
        lambda: c.create_bucket(Bucket="m1-own-bucket"),
    ]
    for call in calls:
        with pytest.raises(ClientError) as denied:
            call()
        assert _status(denied.value) == 403


def test_versioning_keeps_what_a_machine_replaces_out_of_its_reach(stores: Stores) -> None:
    """On a versioned bucket compare-and-swap works as before, and the
    manifests a machine replaced (with garbage, say) stay as old versions that
    its key can neither read nor delete, nor can it turn versioning off."""
    from botocore.exceptions import ClientError

    c = stores.client(MV)
    key = "repos/mv/manifest.json"
    first = c.put_object(Bucket=VERSIONED, Key=key, Body=b"good", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as exists:
        c.put_object(Bucket=VERSIONED, Key=key, Body=b"x", IfNoneMatch="*")
    assert _status(exists.value) == 412
    second = c.put_object(Bucket=VERSIONED, Key=key, Body=b"garbage", IfMatch=first)["ETag"]
    with pytest.raises(ClientError) as stale:
        c.put_object(Bucket=VERSIONED, Key=key, Body=b"x", IfMatch=first)
    assert _status(stale.value) == 412

    owner = stores.owner_client
    versions = owner.list_object_versions(Bucket=VERSIONED, Prefix=key)["Versions"]
    old = [v["VersionId"] for v in versions if v["ETag"] == first]
    assert len(old) == 1
    refused = [
        lambda: c.get_object(Bucket=VERSIONED, Key=key, VersionId=old[0]),
        lambda: c.delete_object(Bucket=VERSIONED, Key=key, VersionId=old[0]),
        lambda: c.delete_object(Bucket=VERSIONED, Key=key),
        lambda: c.list_object_versions(Bucket=VERSIONED, Prefix="repos/mv/"),
        lambda: c.put_bucket_versioning(Bucket=VERSIONED,
                                        VersioningConfiguration={"Status": "Suspended"}),
    ]
    for call in refused:
        with pytest.raises(ClientError) as denied:
            call()
        assert _status(denied.value) == 403
    # The owner puts the good one back, by compare-and-swap.
    good = owner.get_object(Bucket=VERSIONED, Key=key, VersionId=old[0])["Body"].read()
    owner.put_object(Bucket=VERSIONED, Key=key, Body=good, IfMatch=second)
    assert c.get_object(Bucket=VERSIONED, Key=key)["Body"].read() == b"good"


# -- who can delete ---------------------------------------------------------------


@pytest.mark.parametrize("who", [SERVER, OWNER], ids=["server", "owner"])
def test_server_and_owner_can_delete(stores: Stores, who: S3Identity) -> None:
    stores.store(M1, "repos/m1").put("objects/pack/pack-old.pack", b"old")
    stores.store(M2, "repos/m2").put("objects/pack/pack-old.pack", b"old")
    for repo in ("repos/m1", "repos/m2"):
        store = stores.store(who, repo)
        store.delete("objects/pack/pack-old.pack")
        with pytest.raises(NotFound):
            store.get("objects/pack/pack-old.pack")


def test_server_key_stays_under_its_prefix(stores: Stores) -> None:
    stores.owner_client.put_object(Bucket=BUCKET, Key="elsewhere/manifest.json", Body=b"x")
    outside = stores.store(SERVER, "elsewhere")
    with pytest.raises(AuthError):
        outside.delete("manifest.json")
    with pytest.raises(AuthError):
        list(outside.list(""))


# -- what SeaweedFS cannot express (pinned) ---------------------------------------


def test_seaweedfs_write_action_includes_delete(stores: Stores) -> None:
    """``Read:``/``Write:``/``List:bucket/prefix/*`` scope reads, writes and
    listings to the prefix, but Write allows DeleteObject: SeaweedFS's own
    actions cannot make a key append-only."""
    legacy = stores.store(LEGACY, "repos/legacy")
    legacy.put("objects/pack/pack-a.pack", b"a")
    assert legacy.get("objects/pack/pack-a.pack") == b"a"
    assert [k for k, _ in legacy.list("")] == ["objects/pack/pack-a.pack"]
    legacy.delete("objects/pack/pack-a.pack")  # allowed: the reason for IAM policies
    assert legacy.stat("objects/pack/pack-a.pack") is None

    stores.store(M1, "repos/m1").put("manifest.json", b"m1's")
    outside = stores.store(LEGACY, "repos/m1")
    for refused in (lambda: outside.put("x", b"scoped all the same"),
                    lambda: outside.get("manifest.json"),
                    lambda: outside.delete("manifest.json"),
                    lambda: list(outside.list(""))):
        with pytest.raises(AuthError):
            refused()


def test_seaweedfs_bucket_policy_can_deny_deletes(stores: Stores) -> None:
    """A bucket policy (PutBucketPolicy) with a Deny of s3:DeleteObject for one
    principal holds against that identity's ``Write`` action."""
    from botocore.exceptions import ClientError

    lb = stores.client(LEGACY_BP)
    lb.put_object(Bucket=WITH_POLICY, Key="repos/lb/a", Body=b"a")
    lb.delete_object(Bucket=WITH_POLICY, Key="repos/lb/a")  # Write allows it, so far
    owner = stores.owner_client
    owner.put_bucket_policy(Bucket=WITH_POLICY, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "NoDeletes",
            "Effect": "Deny",
            "Principal": {"AWS": f"arn:aws:iam::000000000000:user/{LEGACY_BP.name}"},
            "Action": "s3:DeleteObject",
            "Resource": f"arn:aws:s3:::{WITH_POLICY}/*",
        }],
    }))
    try:
        lb.put_object(Bucket=WITH_POLICY, Key="repos/lb/b", Body=b"b")
        with pytest.raises(ClientError) as denied:
            lb.delete_object(Bucket=WITH_POLICY, Key="repos/lb/b")
        assert _status(denied.value) == 403
        assert owner.get_object(Bucket=WITH_POLICY, Key="repos/lb/b")["Body"].read() == b"b"
    finally:
        owner.delete_bucket_policy(Bucket=WITH_POLICY)


def test_seaweedfs_ignores_conditional_write_condition_keys(stores: Stores) -> None:
    """SeaweedFS never sets ``s3:if-none-match`` (nor ``s3:if-match``,
    ``s3:ObjectCreationOperation``), so a policy cannot require conditional
    writes there.  AWS's form of the Deny (absent If-None-Match, on an object
    creation) never applies: a plain overwrite goes through.  Without the
    ``s3:ObjectCreationOperation`` part it always applies: even a conditional
    write is refused.  On AWS both let exactly the conditional writes through
    (the second one also refuses multipart parts)."""
    from botocore.exceptions import ClientError

    key = "repos/{}/objects/pack/pack-a.pack"
    strict = stores.client(STRICT)
    strict.put_object(Bucket=BUCKET, Key=key.format("strict"), Body=b"a", IfNoneMatch="*")
    strict.put_object(Bucket=BUCKET, Key=key.format("strict"), Body=b"overwritten")  # not denied
    assert stores.store(OWNER, "repos/strict").get("objects/pack/pack-a.pack") == b"overwritten"

    stricter = stores.client(STRICTER)
    for kwargs in ({}, {"IfNoneMatch": "*"}):
        with pytest.raises(ClientError) as denied:
            stricter.put_object(Bucket=BUCKET, Key=key.format("stricter"), Body=b"a", **kwargs)
        assert _status(denied.value) == 403
    # Outside the Deny's resource the policy works as usual.
    stricter.put_object(Bucket=BUCKET, Key="repos/stricter/manifest.json", Body=b"{}")


# -- the docs say what the tests run ---------------------------------------------


def _policy_block(name: str) -> Any:
    """The JSON block that follows ``<!-- policy: NAME -->`` in the docs (or the
    README, once the section has moved there)."""
    readme = DOCS.parents[1] / "README.md"
    for path in (DOCS, readme):
        text = path.read_text() if path.exists() else ""
        m = re.search(rf"<!-- policy: {re.escape(name)} -->\s*```json\n(.*?)```", text, re.S)
        if m:
            return json.loads(m.group(1))
    raise AssertionError(f"no '<!-- policy: {name} -->' JSON block in {DOCS} or {readme}")


def test_docs_policies_are_the_tested_ones() -> None:
    assert _policy_block("machine") == machine_policy("BUCKET", "PREFIX/NAME")
    assert _policy_block("server") == server_policy("BUCKET", "PREFIX")


# -- ketch itself, with a machine's key and the server's -------------------------


def test_ketch_with_a_machine_key_and_the_servers(stores: Stores, run_ketch: RunKetch,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine sets up and saves into its own repository with its own key, and
    can neither save into another machine's nor run gc (it may not delete); the
    server's key runs gc. One clear line for each refusal."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def as_(who: S3Identity) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": who.access_key, "AWS_SECRET_ACCESS_KEY": who.secret_key,
                "KETCH_S3_ENDPOINT": stores.weed.endpoint}

    data = tmp_path / "data"
    (data / "etc").mkdir(parents=True)
    (data / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    mine, theirs = f"s3://{BUCKET}/repos/m1/ketch", f"s3://{BUCKET}/repos/m2/ketch"
    run_ketch("init", "-r", theirs, env=as_(M2), check=True)
    run_ketch("init", "-r", mine, env=as_(M1), check=True)
    for _ in range(2):
        run_ketch("save", "-q", "-r", mine, "-n", "m1", data, env=as_(M1), check=True)
    listed = run_ketch("ls", "-r", mine, "m1", env=as_(M1), check=True).stdout.split()
    assert len(listed) == 3, listed

    for args in (("save", "-q", "-r", theirs, "-n", "m1", data), ("ls", "-r", theirs),
                 ("gc", "-r", mine)):
        r = run_ketch(*args, env=as_(M1))
        err = r.stderr.decode()
        assert r.returncode == 2 and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, (args, err)
    assert "may not delete" in err
    # The refused gc left no lock behind: the server's gc runs at once.
    r = run_ketch("gc", "-r", mine, "--json", env=as_(SERVER))
    assert r.returncode == 0, r.stderr
    assert run_ketch("ls", "-r", mine, "m1", env=as_(SERVER), check=True).stdout.split() == listed
