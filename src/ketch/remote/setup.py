"""`ketch server setup-client`: one repository and one forced-command ssh key
per machine, so a machine's key reaches its own repository and nothing else."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass

from ketch.errors import UsageError
from ketch.git.refs import validate_branch_name
from ketch.repo import init_repository

_KEY_RX = re.compile(r"\A(?:[a-z0-9@.-]+ )?((?:ssh|ecdsa|sk)-[A-Za-z0-9@.-]+) ([A-Za-z0-9+/=]+)(?: (.*))?\Z")


@dataclass
class ClientSetup:
    repo_path: str
    created: bool
    authorized_keys_line: str


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


def setup_client(root: str, name: str, pubkey: str, *, append_only: bool = True,
                 command: list[str] | None = None) -> ClientSetup:
    # The machine name becomes a directory: the branch-name rules (no '..', no
    # control characters) plus no '/' keep it a single, harmless path component.
    if "/" in name or name.startswith("."):
        raise UsageError(f"bad client name {name!r}: no '/' and no leading '.'")
    validate_branch_name(name.encode())
    ktype, b64, _ = parse_public_key(pubkey)
    path = os.path.join(os.path.abspath(root), name)
    os.makedirs(os.path.abspath(root), exist_ok=True)
    created = init_repository(path)
    argv = [*(command or ketch_command()), "server", "--restrict-to", path]
    if append_only:
        argv.append("--append-only")
    # sshd un-escapes only \" inside command="..."; every other backslash is literal.
    forced = shlex.join(argv).replace('"', '\\"')
    line = f'command="{forced}",restrict {ktype} {b64} ketch:{name}'
    return ClientSetup(path, created, line)
