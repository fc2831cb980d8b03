"""User and group names <-> ids, as metadata records them. Cached because from_path runs once per file and NSS
lookups can be slow (LDAP, sssd); bounded so a huge directory service can't
grow them without limit.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd


@functools.lru_cache(maxsize=4096)
def user_name(uid: int) -> bytes | None:
    try:
        return os.fsencode(pwd.getpwuid(uid).pw_name)
    except (KeyError, OverflowError):
        return None


@functools.lru_cache(maxsize=4096)
def group_name(gid: int) -> bytes | None:
    try:
        return os.fsencode(grp.getgrgid(gid).gr_name)
    except (KeyError, OverflowError):
        return None


@functools.lru_cache(maxsize=4096)
def uid_of(name: bytes) -> int | None:
    try:
        return pwd.getpwnam(os.fsdecode(name)).pw_uid
    except (KeyError, ValueError):
        return None


@functools.lru_cache(maxsize=4096)
def gid_of(name: bytes) -> int | None:
    try:
        return grp.getgrnam(os.fsdecode(name)).gr_gid
    except (KeyError, ValueError):
        return None
