"""`ketch server setup-client`: one repository and one forced-command ssh key
per machine, so a machine's key reaches its own repository and nothing else."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass

from ketch.errors import KetchError, UsageError
from ketch.git.refnames import validate_branch_name
from ketch.remote.access import (
    Account,
    Denied,
    X,
    account,
    account_of_uid,
    check_runnable,
    check_tree_readable,
    need,
    owner_name,
    reach,
)
from ketch.remote.authkeys import first_with_blob, parse_line, read_keys

_KEY_RX = re.compile(r"\A(?:[a-z0-9@.-]+ )?((?:ssh|ecdsa|sk)-[A-Za-z0-9@.-]+) ([A-Za-z0-9+/=]+)(?: (.*))?\Z")


@dataclass
class ClientSetup:
    repo_path: str
    created: bool
    authorized_keys_line: str
    user: str
    # The authorized_keys line that already held this very line (1-based), if any.
    already: int | None = None


def ketch_command() -> list[str]:
    """How sshd should start this ketch: the installed script, else this interpreter."""
    exe = shutil.which("ketch")
    if exe:
        return [os.path.abspath(exe)]
    return [sys.executable, "-m", "ketch"]


def parse_public_key(text: str) -> tuple[str, str, str]:
    """(type, base64, comment) of an OpenSSH public key line or .pub file."""
    if os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    text = text.strip()
    m = _KEY_RX.match(text)
    if not m:
        raise UsageError("not an OpenSSH public key (expected e.g. 'ssh-ed25519 AAAA... comment')")
    return m.group(1), m.group(2), m.group(3) or ""


def backup_user(user: str | None, authorized_keys: str | None) -> Account:
    """Who the machine logs in as, so who must own its repository and run the
    forced command: --user, else the owner of the authorized_keys file, else us."""
    if user is not None:
        return account(user)
    if authorized_keys is not None:
        path = authorized_keys if os.path.exists(authorized_keys) else \
            os.path.dirname(os.path.abspath(authorized_keys))
        try:
            return account_of_uid(os.stat(path).st_uid)
        except FileNotFoundError:
            raise UsageError(f"{path}: no such directory") from None
    if os.geteuid() != 0:
        return account_of_uid(os.geteuid())
    raise UsageError("as root, say which user the machine logs in as: --user NAME "
                     "(or --authorized-keys ~NAME/.ssh/authorized_keys)")


def setup_client(root: str, name: str, pubkey: str, *, append_only: bool = True,
                 command: list[str] | None = None, user: str | None = None,
                 authorized_keys: str | None = None) -> ClientSetup:
    """Create NAME's repository under `root`, owned by the backup user, and make
    the forced-command line for its key (appended to `authorized_keys` if given).
    Everything is checked before anything is created or written."""
    # The machine name becomes a directory: the branch-name rules (no '..', no
    # control characters) plus no '/' keep it a single, harmless path component.
    if "/" in name or name.startswith("."):
        raise UsageError(f"bad client name {name!r}: no '/' and no leading '.'")
    validate_branch_name(name.encode())
    ktype, b64, _ = parse_public_key(pubkey)
    who = backup_user(user, authorized_keys)
    root = os.path.abspath(root)
    path = os.path.join(root, name)
    program = command or ketch_command()
    _check_command(program, who)
    argv = [*program, "server", "--restrict-to", path]
    if append_only:
        argv.append("--append-only")
    # sshd un-escapes only \" inside command="..."; every other backslash is literal.
    forced = shlex.join(argv).replace('"', '\\"')
    line = f'command="{forced}",restrict {ktype} {b64} ketch:{name}'
    already = _check_authorized_keys(authorized_keys, line, path, name) \
        if authorized_keys else None
    _check_owner(path, who)
    _check_reachable(path, who)
    made_root = not os.path.isdir(root)
    os.makedirs(root, exist_ok=True)
    from ketch.localrepo import init_repository  # numpy: not for every `ketch server` start

    created = init_repository(path)
    if created:
        _give(path, who)
    if made_root:
        _give(root, who, recursive=False)
    _check_reachable(path, who)
    if authorized_keys and already is None:
        _append(authorized_keys, line, who)
    return ClientSetup(path, created, line, who.name, already)


def _check_command(program: list[str], who: Account) -> None:
    shown = shlex.join(program)
    try:
        check_runnable(program[0], who)
        if program[1:3] == ["-m", "ketch"]:
            check_tree_readable(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), who)
    except Denied as e:
        raise UsageError(f"{e}: {who.name} cannot run {shown}; install ketch where {who.name} "
                         "can run it (e.g. pip install into /opt/ketch) or pass --command PATH"
                         ) from None


def _check_authorized_keys(file: str, line: str, path: str, name: str) -> int | None:
    """The number of the line that already sets this machine up, None if there is
    none; refused if sshd would match this key to another line first."""
    new = parse_line(line)
    assert new is not None
    old = first_with_blob(read_keys(file), new.blob)
    if old is None:
        return None
    target = old.restricted_to()
    if target is not None and os.path.realpath(target) == os.path.realpath(path):
        if old.options == new.options:
            return old.number
        raise UsageError(f"{file} line {old.number} already gives this key to {name} with "
                         "other options; edit or remove that line to change them")
    raise UsageError(f"{file} line {old.number} already has this key ({old.describe()}), and "
                     f"sshd uses the first line that matches: give {name} its own key")


def _check_owner(path: str, who: Account) -> None:
    """An existing repository must belong to the backup user, who writes to it."""
    if who.uid == 0 or not os.path.lexists(path):
        return
    for top, dirs, files in os.walk(path):
        for p in [top, *(os.path.join(top, n) for n in (*dirs, *files))]:
            st = os.lstat(p)
            if st.st_uid != who.uid:
                what = path if p == path else f"{p} in {path}"
                raise UsageError(f"{what} belongs to {owner_name(st)}; it must belong to "
                                 f"{who.name}, who will use it (chown -R {who.name}: {path})")
        if top == path:
            # A repository's own directories, not what a symlink might point at.
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]


def _check_reachable(path: str, who: Account) -> None:
    there = path
    while not os.path.lexists(there):
        there = os.path.dirname(there)
    try:
        reach(there, who)
        need(there, who, X)
    except Denied as e:
        raise UsageError(f"{e}: {who.name} cannot reach {path}; choose a --root {who.name} "
                         "can reach (e.g. /srv/ketch)") from None


def _give(path: str, who: Account, *, recursive: bool = True) -> None:
    try:
        os.chown(path, who.uid, who.gid, follow_symlinks=False)
        for top, dirs, files in os.walk(path) if recursive else ():
            for n in (*dirs, *files):
                os.chown(os.path.join(top, n), who.uid, who.gid, follow_symlinks=False)
    except OSError as e:
        raise KetchError(f"cannot give {path} to {who.name}: {e.strerror}") from None


def _append(file: str, line: str, who: Account) -> None:
    new = not os.path.exists(file)
    ends_open = False
    if not new and os.path.getsize(file) > 0:
        with open(file, "rb") as f:
            f.seek(-1, os.SEEK_END)
            ends_open = f.read(1) != b"\n"  # a hand-edited last line
    with open(file, "a") as f:
        f.write(("\n" if ends_open else "") + line + "\n")
    if new:
        # sshd reads the file as the user it logs in, and insists it is theirs.
        os.chmod(file, 0o600)
        _give(file, who, recursive=False)
