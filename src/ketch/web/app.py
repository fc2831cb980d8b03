"""`ketch web`: the fleet's backups at a glance, served read-only by Starlette.

Addresses are kept stable (users bookmark and script them; README "Web
dashboard"): `/`, `/m/MACHINE`, `/m/MACHINE/browse/NAME/DATE/PATH`,
`/m/MACHINE/file/...`, `/m/MACHINE/tar/...`, `/m/MACHINE/compare/NAME/A..B/PATH`,
the same under `/api/` as JSON, and `/metrics`.

Paths inside a save are taken from the raw request target and percent-decoded
to bytes, so a file whose name is not UTF-8 is reached exactly. They are
looked up in the repository's `NAME/DATE/path` view only, never on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ketch.errors import KetchError, RefNotFound
from ketch.vfs import IsADirectory, NotADirectory, SymlinkLoop
from ketch.web import metrics, pages
from ketch.web.auth import COOKIE, Guard, authorized, session_value
from ketch.web.dashboard import Dashboard
from ketch.web.source import UnknownMachine

MAX_FORM = 4096


class AnyPath(Convertor[str]):
    """Starlette's `path` without its blind spot: a file name may hold a newline,
    which `.*` does not match. The handlers take the exact bytes from the raw
    request target anyway; this only lets the route match."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", AnyPath())
Handler = Callable[[Dashboard, Request], Response]


def _sync(dash: Dashboard, fn: Handler) -> Callable[[Request], Response]:
    """A page handler as a Starlette endpoint (run on its thread pool: the
    repository reads block), with the repository's errors as 404 and 500."""
    def endpoint(request: Request) -> Response:
        try:
            return fn(dash, request)
        except pages.BadAddress as e:
            return dash.error(request, 400, str(e))
        except (UnknownMachine, RefNotFound, NotADirectory, IsADirectory, SymlinkLoop) as e:
            return dash.error(request, 404, str(e))
        except KetchError as e:
            return dash.error(request, 500, str(e))
    return endpoint


def metrics_page(dash: Dashboard, request: Request) -> Response:
    return PlainTextResponse(metrics.render(dash.fleet(), time.time()),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


def _login(dash: Dashboard) -> Callable[[Request], object]:
    async def login(request: Request) -> Response:
        if request.method == "GET":
            return dash.page("login.html", next=request.query_params.get("next", "/"),
                             login=False, failed=False)
        body = b""
        async for piece in request.stream():
            body += piece
            if len(body) > MAX_FORM:
                return dash.error(request, 413, "form too large")
        try:
            form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
        except ValueError:
            return dash.error(request, 400, "not a login form")
        token = (form.get("token") or [""])[0]
        nxt = (form.get("next") or ["/"])[0]
        if not nxt.startswith("/") or nxt.startswith("//") or "\\" in nxt:
            nxt = "/"  # only back into this site
        if dash.token is None:
            return RedirectResponse(nxt, 303)
        if not authorized({"headers": [(b"authorization", b"Bearer " + token.encode())]},
                          dash.token):
            return dash.page("login.html", 401, next=nxt, login=False, failed=True)
        resp = RedirectResponse(nxt, 303)
        resp.set_cookie(COOKIE, session_value(dash.token), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
        return resp
    return login


async def logout(request: Request) -> Response:
    resp = RedirectResponse("/", 303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


def build_app(dash: Dashboard) -> Guard:
    def page(fn: Handler) -> Callable[[Request], Response]:
        return _sync(dash, fn)

    routes = [
        Route("/", page(pages.overview)), Route("/api/", page(pages.overview)),
        Route("/api", page(pages.overview)),
        Route("/metrics", page(metrics_page)),
        Route("/login", _login(dash), methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("ketch.web", "static")]), name="static"),
    ]
    for prefix in ("", "/api"):
        routes += [
            Route(prefix + "/m/{machine}", page(pages.machine)),
            Route(prefix + "/m/{machine}/", page(pages.machine)),
            Route(prefix + "/m/{machine}/browse/{path:anypath}", page(pages.browse_page)),
            Route(prefix + "/m/{machine}/compare/{path:anypath}", page(pages.compare_page)),
        ]
    routes += [Route("/m/{machine}/file/{path:anypath}", page(pages.file_download)),
               Route("/m/{machine}/tar/{path:anypath}", page(pages.tar_download))]

    async def not_found(request: Request, exc: Exception) -> Response:
        return dash.error(request, 404, "no such page")

    app = Starlette(routes=routes, exception_handlers={404: not_found})
    # A redirect to the address without its slash would send `/m/../` on to `/m/..`:
    # every address is matched as it is, or not at all.
    app.router.redirect_slashes = False
    return Guard(app, dash.token, dash.denied)
