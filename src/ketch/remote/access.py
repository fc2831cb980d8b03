"""What another user can reach and run. setup-client runs as root, for whom
os.access says yes to nearly everything, while the forced command it writes
runs as the backup user: so the mode bits are read here for that user's ids.
ACLs are not consulted; they can only be more generous than the mode bits for
the paths that matter here (root-owned system directories and the repository)."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections import deque
from dataclasses import dataclass

from ketch.errors import UsageError

R, W, X = 4, 2, 1
# sshd's default PATH for a session, where `#!/usr/bin/env python3` looks.
SESSION_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    gids: frozenset[int]


def account(name: str) -> Account:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise UsageError(f"no such user: {name}") from None
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid,
                   frozenset(os.getgrouplist(pw.pw_name, pw.pw_gid)))


def account_of_uid(uid: int) -> Account:
    try:
        return account(pwd.getpwuid(uid).pw_name)
    except KeyError:
        raise UsageError(f"uid {uid} has no user name; pass --user NAME") from None


def owner_name(st: os.stat_result) -> str:
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return str(st.st_uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class Denied(Exception):
    """`path` keeps the user from what they need; `why` says how, for a message."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path} {why}")
        self.path = path
        self.why = why


def allowed(st: os.stat_result, who: Account, bit: int) -> bool:
    if who.uid == 0:
        # root may do anything but run a file that has no x bit at all.
        return not bit & X or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == who.uid:
        return st.st_mode >> 6 & bit == bit
    if st.st_gid in who.gids:
        return st.st_mode >> 3 & bit == bit
    return st.st_mode & bit == bit


def _mode(st: os.stat_result) -> str:
    return (f"is mode {stat.S_IMODE(st.st_mode):o} "
            f"(owner {owner_name(st)}, group {_group_name(st.st_gid)})")


def need(path: str, who: Account, bit: int) -> None:
    st = os.stat(path)
    if not allowed(st, who, bit):
        raise Denied(path, _mode(st))


def reach(path: str, who: Account) -> str:
    """The real path of absolute `path`, resolved as `who` would resolve it: every
    directory on the way, through symlinks, must be searchable by them."""
    parts = deque(path.split("/"))
    cur = "/"
    links = 0
    while parts:
        name = parts.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            cur = os.path.dirname(cur)
            continue
        need(cur, who, X)
        nxt = os.path.join(cur, name)
        try:
            st = os.lstat(nxt)
        except FileNotFoundError:
            raise Denied(nxt, "does not exist") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                raise Denied(path, "has a symlink loop")
            target = os.readlink(nxt)
            parts.extendleft(reversed(target.split("/")))
            if target.startswith("/"):
                cur = "/"
            continue
        cur = nxt
    return cur


def check_runnable(path: str, who: Account, *, depth: int = 0) -> None:
    """Raise Denied unless `who` can execute `path`, and for a script its interpreter."""
    real = reach(path, who)
    if not os.path.isfile(real):
        raise Denied(real, "is not a file")
    need(real, who, X)
    with open(real, "rb") as f:
        head = f.read(256)
    if not head.startswith(b"#!") or depth > 3:
        return
    need(real, who, R)  # the interpreter opens the script as that user
    words = head[2:].split(b"\n", 1)[0].split()
    if not words:
        return
    interp = os.fsdecode(words[0])
    check_runnable(interp, who, depth=depth + 1)
    if os.path.basename(interp) == "env" and len(words) > 1 and not words[1].startswith(b"-"):
        import shutil

        found = shutil.which(os.fsdecode(words[1]), path=SESSION_PATH)
        if found is None:
            raise Denied(os.fsdecode(words[1]), f"is not on the session's PATH ({SESSION_PATH})")
        check_runnable(found, who, depth=depth + 1)


def check_tree_readable(path: str, who: Account) -> None:
    """Raise Denied unless `who` can reach and read directory `path` (a package)."""
    real = reach(path, who)
    need(real, who, R | X)
    for entry in os.scandir(real):
        if entry.name.endswith(".py"):
            need(entry.path, who, R)
