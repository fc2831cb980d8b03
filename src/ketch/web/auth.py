"""The dashboard's guard: with a token file, every request but the login form
and the stylesheet needs the token, as `Authorization: Bearer TOKEN` (scripts,
Prometheus) or as the cookie the login form sets (browsers). Every answer
carries a strict Content-Security-Policy and the headers that keep the page
out of frames and its addresses out of Referer headers.

The cookie holds an HMAC of the token, not the token: a leaked cookie does not
give the token that scripts use, and changing the token file (a restart) ends
every session.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ketch.errors import UsageError

COOKIE = "ketch_session"
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
# Reached without the token: the form that asks for it, and what it is drawn with.
OPEN_PATHS = ("/login", "/static/")


def read_token(path: str) -> str:
    """The token in `path` (its first line). Refused when others may read the
    file, as ssh refuses a private key that is."""
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--token-file {path}: {getattr(e, 'strerror', None) or e}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"--token-file {path}: readable by others (chmod 600 {path})")
    if len(token) < 16:
        raise UsageError(f"--token-file {path}: the token must be at least 16 characters")
    return token


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"ketch web session", hashlib.sha256).hexdigest()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v)
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if raw is None:
        return None
    for part in raw.decode("latin-1").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def authorized(scope: Scope, token: str) -> bool:
    auth = _header(scope, b"authorization")
    if auth is not None and auth[:7].lower() == b"bearer ":
        return hmac.compare_digest(auth[7:].strip(), token.encode())
    got = _cookie(scope, COOKIE)
    return got is not None and hmac.compare_digest(got.encode(), session_value(token).encode())


Denied = Callable[[Scope, Receive, Send], Awaitable[None]]


class Guard:
    """ASGI middleware: the headers on every answer, and the token check."""

    def __init__(self, app: ASGIApp, token: str | None, denied: Denied) -> None:
        self.app = app
        self.token = token
        self.denied = denied

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra: list[Any] = [h for h in HEADERS if h[0] not in names]
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        path: str = scope.get("path", "")
        if self.token is not None and not path.startswith(OPEN_PATHS) \
                and not authorized(scope, self.token):
            await self.denied(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)
