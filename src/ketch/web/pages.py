"""The dashboard's pages and their JSON twins (the same handler answers
`/m/...` and `/api/m/...`): each reads the repository through the Dashboard
and renders, nothing else."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ketch.errors import KetchError
from ketch.vfs import VFS, IsADirectory, Item
from ketch.web import browse
from ketch.web.charts import Chart, chart
from ketch.web.compare import compare
from ketch.web.dashboard import JSON, Dashboard
from ketch.web.machine import detail
from ketch.web.summary import STATUS_NAMES, Facts, Verdict, facts_dict, judge


def api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


@dataclass(frozen=True)
class OverviewRow:
    f: Facts
    v: Verdict
    chart: Chart | None
    growth: float | None
    oldest: int  # the oldest of its sets' last saves: the stalest first


def _overview_rows(facts: list[Facts], now: float) -> list[OverviewRow]:
    rows = []
    for f in facts:
        series = [b for _, b in f.size_series(now)]
        rows.append(OverviewRow(f, judge(f, now), chart(series) if f.packs else None,
                                f.growth_per_day(now),
                                min((s.last_save for s in f.sets), default=0)))
    rows.sort(key=lambda r: (-r.v.status, r.oldest, r.f.machine))
    return rows


class BadAddress(KetchError):
    """A path with `.` or `..` in it: no link of the dashboard makes one."""


def _tail(request: Request, kind: str) -> bytes:
    """The exact bytes of the path after /m/MACHINE/KIND/ (or /api/m/...), from
    the raw request target: the decoded one has lost what was not UTF-8."""
    raw = request.scope.get("raw_path") or request.url.path.encode("utf-8", "surrogateescape")
    raw = raw.split(b"?", 1)[0]
    if raw.startswith(b"/api/"):
        raw = raw[len(b"/api"):]
    # b"", b"m", MACHINE, KIND, the rest
    parts = raw.split(b"/", 4)
    if len(parts) < 4 or parts[1] != b"m" or parts[3] != kind.encode():
        raise BadAddress(f"not a {kind} address")
    path = unquote_to_bytes(parts[4] if len(parts) > 4 else b"").strip(b"/")
    if any(p in (b".", b"..") for p in path.split(b"/")):
        raise BadAddress("no . or .. in a path: name the save and the path in it")
    return path


def _crumbs(machine: str, path: bytes) -> list[tuple[str, str]]:
    out = [(machine, f"/m/{machine}/browse/")]
    parts = [p for p in path.split(b"/") if p]
    for i, p in enumerate(parts):
        out.append((browse.display(p), f"/m/{machine}/browse/" +
                    browse.href(b"/".join(parts[: i + 1])) + "/"))
    return out


def _previous(vfs: VFS, path: bytes) -> tuple[bytes, bytes] | None:
    """(previous save, this save) names for a path NAME/DATE/..., for a compare link."""
    parts = path.split(b"/")
    if len(parts) < 2:
        return None
    try:
        names = [n for n, _, _ in vfs.saves(parts[0])]
    except KetchError:
        return None
    here = names[0] if parts[1] == b"latest" and names else parts[1]
    if here not in names:
        return None
    i = names.index(here)
    return (names[i + 1], here) if i + 1 < len(names) else None



def overview(dash: Dashboard, request: Request) -> Response:
    now = time.time()
    facts = dash.fleet()
    if api(request):
        rows = [facts_dict(f, now) for f in facts]
        rows.sort(key=lambda d: (-STATUS_NAMES.index(d["status"]), d["machine"]))
        return JSON({"machines": rows, "generated": int(now)})
    shown = _overview_rows(facts, now)
    return dash.page("overview.html", rows=shown,
                     counts=[sum(r.v.status == s for r in shown) for s in range(3)])


def machine(dash: Dashboard, request: Request) -> Response:
    name = request.path_params["machine"]
    now = time.time()
    f = dash.facts(name)
    d = detail(dash.source.repository(name), dash.vfs(name))
    if api(request):
        return JSON(dict(facts_dict(f, now), detail=d.as_dict()))
    series = f.size_series(now, 90)
    return dash.page("machine.html", f=f, v=judge(f, now), d=d, machine=name,
                     chart=chart([b for _, b in series], 640, 120, 6) if f.packs else None,
                     chart_days=len(series), growth=f.growth_per_day(now))

def browse_page(dash: Dashboard, request: Request) -> Response:
    name = request.path_params["machine"]
    vfs = dash.vfs(name)
    path = _tail(request, "browse")
    item = vfs.resolve(path)
    base = {"machine": name, "path": browse.display(path) or "/", "crumbs": _crumbs(name, path),
            "raw": browse.href(path), "in_save": path.count(b"/") >= 1}
    prev = _previous(vfs, path)
    if prev is not None:
        parts = path.split(b"/", 2)
        rest = b"/" + parts[2] if len(parts) > 2 else b""
        base["compare"] = (f"/m/{name}/compare/" + browse.href(parts[0]) + "/" +
                           browse.href(prev[0] + b".." + prev[1]) + browse.href(rest))
    if item.is_dir:
        rows, api_rows = browse.rows(vfs, path)
        if api(request):
            return JSON({"path": path.decode("utf-8", "surrogateescape"),
                                 "entries": api_rows})
        return dash.page("browse.html", rows=rows, **base)
    text = browse.text_of(vfs, item)
    size = vfs.size(item)
    if api(request):
        return JSON({"path": path.decode("utf-8", "surrogateescape"), "size": size,
                             "type": item.kind, "text": text})
    return dash.page("file.html", text=text, size=size, **base)

def _item(dash: Dashboard, request: Request, kind: str) -> tuple[VFS, bytes, Item]:
    vfs = dash.vfs(request.path_params["machine"])
    path = _tail(request, kind)
    return vfs, path, vfs.resolve(path)

def file_download(dash: Dashboard, request: Request) -> Response:
    vfs, path, item = _item(dash, request, "file")
    if item.is_dir:
        raise IsADirectory(f"{browse.display(path)}: is a directory (its tar: /tar/)")
    name = path.rsplit(b"/", 1)[-1]
    return StreamingResponse(browse.content(vfs, item), media_type="application/octet-stream",
                             headers={"content-disposition": browse.attachment(name),
                                      "content-length": str(vfs.size(item))})

def tar_download(dash: Dashboard, request: Request) -> Response:
    vfs, path, item = _item(dash, request, "tar")
    top = path.rsplit(b"/", 1)[-1] or request.path_params["machine"].encode()
    return StreamingResponse(browse.tar_stream(vfs, item, top), media_type="application/x-tar",
                             headers={"content-disposition": browse.attachment(top + b".tar")})

def compare_page(dash: Dashboard, request: Request) -> Response:
    name = request.path_params["machine"]
    vfs = dash.vfs(name)
    tail = _tail(request, "compare")
    parts = tail.split(b"/", 2)
    if len(parts) < 2 or b".." not in parts[1]:
        return dash.error(request, 404, "compare: /m/MACHINE/compare/NAME/DATE_A..DATE_B/PATH")
    a_name, _, b_name = parts[1].partition(b"..")
    rest = b"/" + parts[2] if len(parts) > 2 else b""
    pa, pb = parts[0] + b"/" + a_name + rest, parts[0] + b"/" + b_name + rest
    a, b = vfs.resolve(pa), vfs.resolve(pb)
    result = compare(vfs, a, b, pa, pb)
    if api(request):
        return JSON(dict(result.as_dict(), a=pa.decode("utf-8", "surrogateescape"),
                                 b=pb.decode("utf-8", "surrogateescape")))
    return dash.page("compare.html", machine=name, r=result, a=browse.display(pa),
                     b=browse.display(pb), crumbs=_crumbs(name, pb))

