"""What a ref or branch name may be: git's rules, bup's, and ketch's for branches."""

from __future__ import annotations

import re

from ketch.errors import KetchError

_BAD_CHARS = re.compile(rb"[\[ ~^:?*\\\x00-\x1f\x7f]|\.\.|//|@\{")
_PSEUDO_REF = re.compile(rb"[A-Z][A-Z_]*\Z")


class BadRefName(KetchError):
    """A branch or ref name is not acceptable to git and bup."""



def shown_name(name: bytes) -> str:
    """A name for a message: text, its odd bytes as \\xNN (never Python's b'...')."""
    return name.decode("utf-8", "backslashreplace")


def ref_name_problem(name: bytes) -> str | None:
    """Why ``name`` is not a valid branch name, or None (bup's valid_save_name)."""
    if not name:
        return "it is empty"
    if name == b"@":
        return "it is '@'"
    if name.startswith(b"/") or name.endswith(b"/"):
        return "it starts or ends with '/'"
    if name.endswith(b"."):
        return "it ends with '.'"
    m = _BAD_CHARS.search(name)
    if m:
        return f"it contains '{shown_name(m.group())}'"[:80]
    for part in name.split(b"/"):
        if part.startswith(b"."):
            return "a component starts with '.'"
        if part.endswith(b".lock"):
            return "a component ends with '.lock'"
    return None


def branch_name_problem(name: bytes) -> str | None:
    """Why ``name`` cannot be a ketch branch, or None: the one rule for save,
    split and the config's set and dump names.

    A valid git ref component: ls and restore read NAME/DATE/PATH, so the first
    component is the whole branch name (`a/b` would read as branch `a`, save
    `b`; `etc/foo` cannot exist beside `etc`). `latest` and dates only name
    saves inside a branch, so they do not clash."""
    if b"/" in name:
        return "it contains '/' (a branch name is one path component, as in NAME/latest/PATH)"
    if name.startswith(b"."):
        return "it starts with '.'"
    return ref_name_problem(name)


def validate_branch_name(name: bytes) -> None:
    """Raise BadRefName unless ``name`` is usable as a branch (see branch_name_problem)."""
    problem = branch_name_problem(name)
    if problem:
        raise BadRefName(f"invalid branch name '{shown_name(name)}': {problem}")


def check_ref_name(name: bytes, allow_pseudo: bool = False) -> None:
    """Raise BadRefName unless ``name`` is a full ref name (``refs/...``).

    With ``allow_pseudo``, all-caps top-level names such as HEAD pass too.
    """
    if allow_pseudo and _PSEUDO_REF.match(name):
        return
    if not name.startswith(b"refs/"):
        raise BadRefName(f"invalid ref name '{shown_name(name)}': it does not start with 'refs/'")
    problem = ref_name_problem(name[5:])
    if problem:
        raise BadRefName(f"invalid ref name '{shown_name(name)}': {problem}")
