"""Where the dashboard's repositories come from: every repository under a
backup server's root (`--root DIR`, one per machine, named by its directory),
one repository (`-d DIR`), or every repository of a mirror in S3 (`-r s3://`).

Repositories stay open between requests: a local one reads its refs from disk
each time and finds new packs when it misses an object, so it never goes
stale. A mirror's repository answers from the manifest it read, so it is
opened again once it is older than `STORE_TTL`.
"""

from __future__ import annotations

import os
import re
import threading
import time
from abc import ABC, abstractmethod

from ketch.errors import KetchError, UsageError
from ketch.lifecycle.fleet import find_repositories
from ketch.localrepo import LocalRepository
from ketch.offsite.manifest import list_repositories
from ketch.offsite.store import ObjectStore
from ketch.remote.location import is_store_url, open_store
from ketch.repo import Repository

STORE_TTL = 30.0
# A machine's name appears in every address: nothing that could step out of
# the root, or need escaping in a URL path.
_NAME_RX = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._@+-]{0,254}\Z")


class UnknownMachine(KetchError):
    """No repository of that name is served."""


def valid_name(name: str) -> bool:
    return bool(_NAME_RX.match(name)) and name not in (".", "..")


class Source(ABC):
    """The served repositories, by machine name."""

    description: str

    def __init__(self) -> None:
        self._open: dict[str, tuple[float, Repository]] = {}
        self._lock = threading.Lock()

    @abstractmethod
    def names(self) -> list[str]:
        """The machines served now, sorted."""

    @abstractmethod
    def _open_repo(self, name: str) -> Repository: ...

    def _ttl(self) -> float:
        return float("inf")

    def _exists(self, name: str) -> bool:
        return name in self.names()

    def repository(self, name: str) -> Repository:
        if not valid_name(name):
            raise UnknownMachine(f"no machine named {name!r} here")
        with self._lock:
            got = self._open.get(name)
        # Asked again each time: a repository moved away is not served from
        # what was open.
        if not self._exists(name):
            raise UnknownMachine(f"no machine named {name!r} here")
        if got is not None and time.monotonic() - got[0] < self._ttl():
            return got[1]
        repo = self._open_repo(name)
        with self._lock:
            # Requests may still hold the one replaced: it is left to the
            # garbage collector rather than closed under them.
            self._open[name] = (time.monotonic(), repo)
        return repo

    def close(self) -> None:
        with self._lock:
            for _, repo in self._open.values():
                repo.close()
            self._open.clear()


class RootSource(Source):
    """Every repository directly under a directory."""

    def __init__(self, root: str) -> None:
        super().__init__()
        if not os.path.isdir(root):
            raise UsageError(f"{root}: no such directory")
        if all(os.path.isdir(os.path.join(root, d)) for d in ("objects", "refs")):
            raise UsageError(f"{root} is a repository, not a root of repositories: "
                             f"ketch web -d {root}")
        self.root = os.path.abspath(root)
        self.description = self.root

    def names(self) -> list[str]:
        return [n for n in (os.path.basename(p) for p in find_repositories(self.root))
                if valid_name(n)]

    def _exists(self, name: str) -> bool:
        # One machine's check, not the listing of all (an overview asks for each).
        path = os.path.join(self.root, name)
        return os.path.isdir(os.path.join(path, "objects")) and \
            os.path.isdir(os.path.join(path, "refs"))

    def _open_repo(self, name: str) -> Repository:
        return LocalRepository(os.path.join(self.root, name))


class SingleSource(Source):
    """One repository, named by its directory."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        LocalRepository(self.path).close()  # says clearly when it is not one
        self.name = os.path.basename(self.path.rstrip("/")) or "repository"
        if not valid_name(self.name):
            self.name = "repository"
        self.description = self.path

    def names(self) -> list[str]:
        return [self.name]

    def _open_repo(self, name: str) -> Repository:
        return LocalRepository(self.path)


class StoreSource(Source):
    """Every repository of a mirror in S3 (read-only)."""

    def __init__(self, url: str, endpoint_url: str | None = None,
                 encrypt_key: str | None = None) -> None:
        super().__init__()
        if not is_store_url(url):
            raise UsageError(f"{url}: not an s3:// address")
        self.url = url.rstrip("/")
        self.description = self.url
        self.store: ObjectStore = open_store(self.url, endpoint_url=endpoint_url,
                                             encrypt_key=encrypt_key)
        self._names: tuple[float, list[str]] | None = None

    def _ttl(self) -> float:
        return STORE_TTL

    def names(self) -> list[str]:
        now = time.monotonic()
        if self._names is None or now - self._names[0] > STORE_TTL:
            self._names = (now, [n for n in list_repositories(self.store) if valid_name(n)])
        return self._names[1]

    def _open_repo(self, name: str) -> Repository:
        from ketch.offsite.s3repo import StoreRepository
        return StoreRepository(self.store, name, url=self.url)


def open_source(root: str | None, repo_dir: str | None, url: str | None,
                endpoint_url: str | None = None, encrypt_key: str | None = None) -> Source:
    given = [x for x in (root, repo_dir, url) if x]
    if len(given) != 1:
        raise UsageError("give one of --root DIR, -d DIR or -r s3://BUCKET/PREFIX")
    if root:
        return RootSource(root)
    if repo_dir:
        return SingleSource(repo_dir)
    assert url is not None
    return StoreSource(url, endpoint_url, encrypt_key)
