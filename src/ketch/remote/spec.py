"""`-r` values, parsed as bup 0.33 parses them (bup-format.md 6.1)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ketch.errors import UsageError

_URL_RX = re.compile(
    r"([a-z]+)://"
    r"(?:(?P<sb>\[)?((?(sb)[0-9a-f:]+|[^:/]+))(?(sb)\])"
    r"(?::(\d+))?)?"
    r"(/.*)?\Z",
    re.I | re.S,
)


@dataclass(frozen=True)
class RemoteSpec:
    """Where a repository is served: over ssh (`host` set) or by a local server."""

    protocol: str  # "ssh" or "file"
    host: str | None
    port: int | None
    path: str  # "" means the server's default repository

    def cache_key(self) -> str:
        """bup's index-cache directory name for this remote (6.6), but for an absent
        host or path, which bup spells "None": the cache is ketch's own, bup never
        reads it, and a user listing ~/.cache/ketch/remote should not see "None"."""
        return re.sub(r"[^@\w]", "_", f"{self.host or ''}:{self.path}", flags=re.A)

    def __str__(self) -> str:
        if self.protocol == "file":
            return f":{self.path}"
        if self.port is not None:
            return f"ssh://{self.host}:{self.port}{self.path}"
        return f"{self.host}:{self.path}"


def parse_remote(text: str) -> RemoteSpec:
    """`host:path`, `user@host:path`, `ssh://[user@]host[:port]/path`, `:path`, `file://path`.

    An empty path (`host:`, `ssh://host`, `ssh://host/`) sends no set-dir: the
    server uses its default repository, the one a setup-client key is confined to."""
    if "\n" in text or "\r" in text:
        # bup replaces them with spaces; a backup target with a newline is a typo.
        raise UsageError(f"remote contains a line break: {text!r}")
    m = _URL_RX.match(text)
    if m:
        scheme, host, port, path = m.group(1), m.group(3), m.group(4), m.group(5)
        if scheme not in ("ssh", "file", "bup"):
            raise UsageError(f"unexpected protocol in remote {text!r}: {scheme}")
        if scheme == "bup":
            raise UsageError("bup:// (bup daemon) remotes are not supported; use ssh://")
        if scheme == "file":
            return RemoteSpec("file", None, None, (host or "") + (path or ""))
        if not host:
            raise UsageError(f"remote {text!r} names no host")
        # bup sends "/" for `ssh://host/` and the server is then asked for the
        # root directory as a repository; the README's `ssh://user@server/`
        # means the key's own repository, as `host:` does.
        return RemoteSpec("ssh", host, int(port) if port else None,
                          "" if not path or path == "/" else path)
    head, sep, rest = text.partition(":")
    if not sep or head in ("", "-"):
        return RemoteSpec("file", None, None, rest if sep else head)
    return RemoteSpec("ssh", head, None, rest)
