"""One string for "where the repository is", as a config file holds it: a local
path, or a remote (`host:path`, `ssh://…`) served by `ketch server`."""

from __future__ import annotations

import os

from ketch.repo import LocalRepository, Repository


def is_remote(location: str) -> bool:
    if location.startswith(("/", ".", "~")):
        return False
    return "://" in location or ":" in location


def open_location(location: str, *, create: bool = False) -> Repository:
    if is_remote(location):
        from ketch.remote.client import RemoteRepository
        from ketch.remote.spec import parse_remote

        return RemoteRepository(parse_remote(location), create=create)
    path = os.path.expanduser(location)
    if create:
        from ketch.repo import init_repository

        init_repository(path)
    return LocalRepository(path)
