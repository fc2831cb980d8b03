"""The dashboard's state: what is served, the per-machine summaries, a VFS
per machine, the templates."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ketch.errors import KetchError
from ketch.text import plural
from ketch.vfs import VFS
from ketch.web.charts import human_bytes
from ketch.web.source import Source
from ketch.web.summary import STATUS_NAMES, Facts, SummaryCache, ago


class JSON(JSONResponse):
    """JSON with every non-ASCII character escaped: names that are not UTF-8
    travel as lone surrogates (U+DC80 to U+DCFF), which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"),
                          default=str).encode()


class Dashboard:
    def __init__(self, source: Source, token: str | None = None) -> None:
        self.source = source
        self.token = token
        self.cache = SummaryCache()
        self._vfs: dict[str, VFS] = {}
        self._fleet_lock = threading.Lock()
        self.env = Environment(loader=PackageLoader("ketch.web", "templates"),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.env.filters["bytes"] = human_bytes
        self.env.filters["plural"] = plural
        self.env.filters["ago"] = lambda t: ago(time.time() - t) if t else "never"
        self.env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) \
            if t else ""
        self.env.globals["status_name"] = lambda s: STATUS_NAMES[s]
        # An exit code's colour: 0 ok, 1 warnings, anything else failed.
        self.env.globals["code_class"] = lambda c: STATUS_NAMES[min(max(int(c), 0), 2)]

    # -- data ---------------------------------------------------------------------------

    def fleet(self) -> list[Facts]:
        # One at a time: a request that comes while the start-up reading (or
        # another request) reads summaries waits and then finds them cached,
        # rather than reading them all again beside it.
        with self._fleet_lock:
            out = []
            for name in self.source.names():
                try:
                    repo = self.source.repository(name)
                except (KetchError, OSError) as e:
                    out.append(Facts(name, error=str(e)))
                    continue
                out.append(self.cache.facts(name, repo))
            return out

    def warm(self) -> None:
        """Read every summary now; a failure shows on the page that asks later."""
        try:
            self.fleet()
            self.env.get_template("overview.html")
        except Exception:  # noqa: BLE001,S110 - only a head start; pages report errors
            pass

    def vfs(self, machine: str) -> VFS:
        repo = self.source.repository(machine)
        v = self._vfs.get(machine)
        if v is None or v.repo is not repo:
            v = self._vfs[machine] = VFS(repo)
        return v

    def facts(self, machine: str) -> Facts:
        return self.cache.facts(machine, self.source.repository(machine))

    # -- rendering ----------------------------------------------------------------------

    def page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("where", self.source.description)
        context.setdefault("login", self.token is not None)
        return HTMLResponse(self.env.get_template(template).render(**context), status)

    def error(self, request: Request | None, status: int, message: str) -> Response:
        if request is not None and request.url.path.startswith("/api/"):
            return JSON({"error": message}, status)
        return self.page("error.html", status, message=message, code=status)

    async def denied(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path.startswith("/api/") or path == "/metrics":
            resp: Response = JSON({"error": "a token is needed (Authorization: Bearer)"},
                                          401, headers={"www-authenticate": "Bearer"})
        else:
            resp = self.page("login.html", 401, next=path, login=False, failed=False)
        await resp(scope, receive, send)
