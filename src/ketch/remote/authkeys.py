"""Reading an OpenSSH authorized_keys file as sshd does (sshd(8), AUTHORIZED_KEYS
FILE FORMAT): `[options] keytype base64 [comment]`, where the options are
comma-separated and a double-quoted value may hold commas, spaces and `\\"`."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

_KEYTYPE_RX = re.compile(r"(?:ssh|ecdsa|sk)-[A-Za-z0-9@.-]+\Z")
_BLOB_RX = re.compile(r"[A-Za-z0-9+/]+=*\Z")


@dataclass(frozen=True)
class KeyLine:
    number: int  # 1-based, as an editor shows it
    options: tuple[str, ...]
    keytype: str
    blob: str
    comment: str

    def option(self, name: str) -> str | None:
        """The value of `name="..."` (un-escaped as sshd does), or None."""
        for opt in self.options:
            key, sep, value = opt.partition("=")
            if sep and key.lower() == name:
                if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                    value = value[1:-1]
                return value.replace('\\"', '"')
        return None

    def restricted_to(self) -> str | None:
        """The repository a `ketch server --restrict-to DIR` forced command serves."""
        command = self.option("command")
        if command is None:
            return None
        try:
            argv = shlex.split(command)
        except ValueError:
            return None
        for i, arg in enumerate(argv):
            if arg == "--restrict-to" and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith("--restrict-to="):
                return arg.partition("=")[2]
        return None

    def describe(self) -> str:
        who = f"'{self.comment}'" if self.comment else f"{self.keytype} key"
        repo = self.restricted_to()
        if repo is not None:
            return f"{who}, restricted to {repo}"
        if self.option("command") is not None:
            return f"{who}, with another forced command"
        return f"{who}, with no forced command (a full login)"


def _split_options(text: str) -> tuple[list[str], str] | None:
    """(options, rest of the line) for a line that starts with an options field."""
    opts: list[str] = []
    cur: list[str] = []
    quoted = False
    i = 0
    while i < len(text):
        c = text[i]
        if quoted and c == "\\" and text[i + 1:i + 2] == '"':
            cur.append('\\"')
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif not quoted and c in " \t":
            break
        elif not quoted and c == ",":
            opts.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    if quoted:
        return None
    opts.append("".join(cur))
    return opts, text[i:]


def parse_line(text: str, number: int = 0) -> KeyLine | None:
    """The key on one line, or None for a blank line, a comment or an unreadable one."""
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    options: list[str] = []
    fields = text.split(None, 2)
    if not (len(fields) >= 2 and _KEYTYPE_RX.match(fields[0]) and _BLOB_RX.match(fields[1])):
        split = _split_options(text)
        if split is None:
            return None
        options, rest = split
        fields = rest.split(None, 2)
        if not (len(fields) >= 2 and _KEYTYPE_RX.match(fields[0])
                and _BLOB_RX.match(fields[1])):
            return None
    comment = fields[2].strip() if len(fields) > 2 else ""
    return KeyLine(number, tuple(options), fields[0], fields[1], comment)


def read_keys(path: str) -> list[KeyLine]:
    """The keys in file `path` (none if it does not exist), in order."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    return [k for n, text in enumerate(lines, 1) if (k := parse_line(text, n)) is not None]


def first_with_blob(keys: list[KeyLine], blob: str) -> KeyLine | None:
    """The line sshd would use for this key: the first that matches."""
    return next((k for k in keys if k.blob == blob), None)
