"""One string for "where the repository is", as a config file holds it: a local
path, a remote (`host:path`, `ssh://…`) served by `ketch server`, or a
repository in a bucket (`s3://bucket/prefix/REPO`: one saved into directly, or
a mirror, which only reads)."""

from __future__ import annotations

import os
from typing import Literal

from ketch.errors import UsageError
from ketch.localrepo import LocalRepository
from ketch.offsite.store import ObjectStore
from ketch.repo import Repository

Kind = Literal["auto", "local", "remote"]


def is_remote(location: str) -> bool:
    if location.startswith(("/", ".", "~")):
        return False
    return "://" in location or ":" in location


def is_store_url(location: str) -> bool:
    return location.startswith("s3://")


def open_store(url: str, *, endpoint_url: str | None = None,
               encrypt_key: str | None = None) -> ObjectStore:
    """The store at `s3://bucket/prefix`: retried, and encrypted with the key in the
    file `encrypt_key` (default: $KETCH_ENCRYPT_KEY, when set)."""
    from ketch.offsite.encrypt import EncryptedStore
    from ketch.offsite.keyfile import load_key
    from ketch.offsite.retry import RetryingStore
    from ketch.offsite.s3 import S3Store

    if not is_store_url(url):
        raise UsageError(f"not an s3:// URL: {url}")
    # S3Store itself falls back to $KETCH_S3_ENDPOINT and $AWS_ENDPOINT_URL(_S3).
    store: ObjectStore = RetryingStore(S3Store(url, endpoint_url=endpoint_url))
    key_file = encrypt_key or os.environ.get("KETCH_ENCRYPT_KEY")
    if key_file:
        # The name index is rewritten once a minute (and when a push publishes its
        # manifest), not after every pack: a first push has thousands.
        store = EncryptedStore(store, load_key(os.path.expanduser(key_file)),
                               index_interval=60.0)
    return store


def split_repo_url(location: str) -> tuple[str, str]:
    """`s3://bucket/prefix/REPO` -> (`s3://bucket/prefix`, `REPO`)."""
    base, _, name = location.rstrip("/").rpartition("/")
    if not is_store_url(base + "/") or base.rstrip("/") == "s3:" or not name:
        raise UsageError(f"{location}: name a repository in the mirror: s3://BUCKET[/PREFIX]/REPO")
    return base, name


def open_location(location: str, *, create: bool = False, kind: Kind = "auto",
                  endpoint_url: str | None = None,
                  encrypt_key: str | None = None) -> Repository:
    """The repository at `location`. `kind` says who named it: "local" (`-d`: always a
    directory, even with a colon in its name), "remote" (`-r`: a server, `:PATH` being
    a local one, or an S3 mirror), "auto" (a config's string: decided by its form)."""
    if kind != "local" and is_store_url(location):
        from ketch.offsite.bucket import BucketRepository
        from ketch.offsite.bucketinit import create_bucket_repository

        url, name = split_repo_url(location)
        store = open_store(url, endpoint_url=endpoint_url, encrypt_key=encrypt_key)
        created = create_bucket_repository(store, name, url) if create else None
        return BucketRepository(store, name, url=url, created=created)
    if kind == "remote" or (kind == "auto" and is_remote(location)):
        from ketch.remote.client import RemoteRepository
        from ketch.remote.spec import parse_remote

        return RemoteRepository(parse_remote(location), create=create)
    path = os.path.expanduser(location)
    if create:
        from ketch.localrepo import init_repository

        init_repository(path)
    return LocalRepository(path)
