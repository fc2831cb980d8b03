"""Making a repository in a bucket (`ketch init -r s3://...`): the store must
enforce compare-and-swap, and the first manifest is created with it.

Only a store that refuses a second `If-None-Match: *` create and a stale
`If-Match` replace keeps two writers from losing one's update; a store that
ignores them is refused at init rather than found out by a lost save.
"""

from __future__ import annotations

import contextlib
import uuid

from ketch.errors import KetchError
from ketch.offsite.manifest import (
    Manifest,
    ManifestError,
    check_repo_name,
    manifest_key,
    now_iso,
    parse_manifest,
)
from ketch.offsite.store import NotFound, ObjectStore, PreconditionFailed, StoreError

_INIT_CONFIG = ("[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
                "[pack]\n\tindexVersion = 2\n")


class NoCompareAndSwap(KetchError):
    """The store ignores conditional writes: concurrent saves could lose updates."""


def probe_conditional_writes(store: ObjectStore, name: str) -> None:
    """Raise NoCompareAndSwap unless the store refuses a second create and a
    stale replace, as S3 does with If-None-Match and If-Match."""
    key = f"{name}/cas-probe-{uuid.uuid4().hex}"
    why = None
    try:
        tag = store.put_if(key, b"1", None)
        try:
            store.put_if(key, b"2", None)
            why = "it accepted a second create (If-None-Match: *)"
        except PreconditionFailed:
            pass
        if why is None:
            store.put_if(key, b"3", tag)
            try:
                store.put_if(key, b"4", tag)
                why = "it accepted a replace of a changed value (If-Match)"
            except PreconditionFailed:
                pass
    except NotImplementedError:
        why = "it has no conditional writes"
    except StoreError as e:
        if "NotImplemented" not in str(e):
            raise
        why = f"it has no conditional writes ({e})"
    finally:
        with contextlib.suppress(StoreError):
            store.delete(key)  # a machine key may not delete: the probe stays, harmless
    if why is not None:
        raise NoCompareAndSwap(
            f"{store.location()}: this store ignores conditional writes ({why}); two saves "
            "at once could lose one's update, so ketch keeps no repository in it")


def create_bucket_repository(store: ObjectStore, name: str, url: str) -> bool:
    """Make `name` a repository in `store`; False when it already is one."""
    check_repo_name(name)
    key = manifest_key(name)
    with contextlib.suppress(NotFound):
        raw, _ = store.get_tagged(key)
        if not parse_manifest(raw, name).primary:
            raise ManifestError(f"{url}/{name}: is a mirror (written by ketch mirror push); "
                                "saves go to its local repository")
        return False
    probe_conditional_writes(store, name)
    m = Manifest(repository=name, generation=1, time=now_iso(), config=_INIT_CONFIG,
                 primary=True)
    try:
        store.put_if(key, m.to_json(), None)
    except PreconditionFailed:
        return False  # another init came first
    return True
