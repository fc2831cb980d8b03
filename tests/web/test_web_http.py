"""`ketch web` over HTTP, as a script, Prometheus or curl sees it: a real
uvicorn process serving a root made by real `ketch run`s (tests/web/fleet.py).
What a browser sees and runs is in test_web_browser.py."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.services.web import WebServer
from tests.web.fleet import HOSTILE_NAMES, XSS_NAME, Fleet, git_fsck, run_ketch_plain

TOKEN = "s3cret-token-for-the-tests-0123456789"


@pytest.fixture(scope="module")
def guarded(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    d = tmp_path_factory.mktemp("guarded")
    token = d / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    with WebServer.start(d, "--root", fleet.root, "--token-file", token) as w:
        yield w


def get_json(web: WebServer, path: str, headers: dict[str, str] | None = None) -> Any:
    status, _, body = web.get(path, headers)
    assert status == 200, (path, status, body[:500])
    return json.loads(body)


def home_path(fleet: Fleet) -> str:
    """web01's home inside its saves: `ketch run` keeps the absolute path."""
    return quote(str(fleet.web01_home).lstrip("/"))


def test_overview_puts_the_stale_and_the_failed_first(web: WebServer) -> None:
    got = get_json(web, "/api/")
    by = {m["machine"]: m for m in got["machines"]}
    assert by["web01"]["status"] == "ok", by["web01"]["problems"]
    assert by["db01"]["status"] == "bad"
    assert any("3 d" in p for p in by["db01"]["problems"]), by["db01"]["problems"]
    assert by["mail01"]["status"] == "bad"
    assert by["mail01"]["run"]["exit_code"] == 2
    assert "last run FAILED" in by["mail01"]["problems"]
    assert [m["machine"] for m in got["machines"]][2] == "web01"  # worst first
    assert by["web01"]["repo_bytes"] > 200_000
    assert {s["name"] for s in by["web01"]["sets"]} == {"home", "etc"}
    status, headers, page = web.get("/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    text = page.decode()
    assert text.index('data-machine="web01"') > text.index('data-machine="db01"')
    assert 'class="row s-bad" data-machine="mail01"' in text


def test_a_machine_page_has_its_saves_with_the_runs_numbers(web: WebServer) -> None:
    got = get_json(web, "/api/m/web01")
    home = next(s for s in got["detail"]["sets"] if s["name"] == "home")
    assert len(home["saves"]) == 2
    assert all(s["files"] and s["files"] >= 10 for s in home["saves"]), home["saves"]
    assert home["saves"][1]["bytes_new"] > 200_000  # the first save stored the blob
    assert len(got["detail"]["runs"]) == 2
    assert all(r["status"] == "OK" for r in got["detail"]["runs"])
    status, _, page = web.get("/m/mail01")
    assert status == 200
    assert b"broken" in page and b"FAILED" in page


def test_every_hostile_name_is_listed_escaped_and_downloads_exactly(web: WebServer,
                                                                    fleet: Fleet) -> None:
    base = f"/m/web01/browse/home/latest/{home_path(fleet)}/"
    listing = get_json(web, "/api" + base)
    names = {e["name"].encode("utf-8", "surrogateescape") for e in listing["entries"]}
    assert set(HOSTILE_NAMES) <= names
    status, _, page = web.get(base)
    assert status == 200
    assert b"<img src=x" not in page
    assert b"&lt;img src=x onerror=alert(1)&gt;" in page
    assert b"new\\x0aline.txt" in page  # shown on one line
    for name in HOSTILE_NAMES:
        path = f"/m/web01/file/home/latest/{home_path(fleet)}/{quote(name, safe='')}"
        status, headers, body = web.get(path)
        assert status == 200, (name, body[:200])
        want = (fleet.web01_home / os.fsdecode(name)).read_bytes()
        assert body == want, name
        assert headers["content-disposition"].startswith("attachment;")
        assert headers["content-type"] == "application/octet-stream"


def test_a_text_file_is_shown_escaped_and_a_binary_one_is_not(web: WebServer,
                                                             fleet: Fleet) -> None:
    base = f"/m/web01/browse/home/latest/{home_path(fleet)}/"
    status, _, page = web.get(base + quote(XSS_NAME))
    assert status == 200
    assert b"hostile: &lt;img src=x onerror=alert(1)&gt;" in page
    status, _, page = web.get(base + "docs/notes.txt")
    assert b"third line" in page
    status, _, page = web.get(base + "blob.bin")
    assert status == 200 and b"Not shown" in page


def test_a_directory_downloads_as_a_tar_of_the_source_tree(web: WebServer, fleet: Fleet,
                                                           tmp_path: Path) -> None:
    status, headers, body = web.get(f"/m/web01/tar/home/latest/{home_path(fleet)}")
    assert status == 200, body[:300]
    assert headers["content-type"] == "application/x-tar"
    assert "content-length" not in headers  # streamed, not built first
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.extractall(out, filter="fully_trusted")
    got = out / "home"
    src = fleet.web01_home
    want = {p.relative_to(src) for p in src.rglob("*")}
    assert {p.relative_to(got) for p in got.rglob("*")} == want
    for rel in want:
        a, b = src / rel, got / rel
        sa, sb = os.lstat(a), os.lstat(b)
        assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), rel
        if stat.S_ISLNK(sa.st_mode):
            assert os.readlink(a) == os.readlink(b)
            continue
        assert stat.S_IMODE(sa.st_mode) == stat.S_IMODE(sb.st_mode), rel
        assert int(sa.st_mtime) == int(sb.st_mtime), rel
        if stat.S_ISREG(sa.st_mode):
            assert a.read_bytes() == b.read_bytes(), rel


def test_two_saves_compare_by_file_and_by_line(web: WebServer, fleet: Fleet) -> None:
    saves = get_json(web, "/api/m/web01/browse/home/")
    names = sorted(e["name"] for e in saves["entries"] if e["name"] != "latest")
    assert len(names) == 2
    base = f"/api/m/web01/compare/home/{names[0]}..{names[1]}/{home_path(fleet)}"
    got = get_json(web, base)
    changes = {(c["what"], c["path"]) for c in got["changes"]}
    assert changes == {("changed", "docs/notes.txt"), ("added", "docs/added.txt"),
                       ("removed", "docs/deep/er/leaf.txt")}
    diff = get_json(web, base + "/docs/notes.txt")["diff"]
    assert "+third line" in diff and not any(line.startswith("-") and "line" in line
                                             for line in diff[2:])
    status, _, page = web.get(base[len("/api"):])
    assert status == 200 and b"docs/added.txt" in page


def test_metrics_parse_with_prometheus_own_parser(web: WebServer, fleet: Fleet) -> None:
    status, headers, body = web.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    assert samples[("ketch_last_run_exit_code", (("machine", "mail01"),))] == 2
    assert samples[("ketch_last_run_exit_code", (("machine", "web01"),))] == 0
    db = samples[("ketch_last_save_timestamp_seconds", (("machine", "db01"), ("set", "pg")))]
    assert 2.9 * 86400 < fleet.now - db < 3.1 * 86400
    assert samples[("ketch_machine_status", (("machine", "db01"),))] == 2
    assert samples[("ketch_repository_bytes", (("machine", "web01"),))] > 200_000


@pytest.mark.parametrize("path", [
    "/m/../../etc/passwd", "/m/..%2f..%2fetc%2fpasswd/", "/m/%2e%2e/", "/m/web01/../../etc/passwd",
    "/m/web01/file/..%2f..%2f..%2fetc%2fpasswd", "/m/web01/file/home/latest/..%2f..%2f..",
    "/m/web01/browse/%2e%2e/%2e%2e/%2e%2e/etc/", "/m/nosuch", "/m/web01/tar/nosuch/latest",
    "/static/../../../../etc/passwd", "/m/web01%00/", "/m/" + "a" * 300,
])
def test_nothing_outside_the_repositories_is_served(web: WebServer, path: str) -> None:
    status, headers, body = web.get(path)
    assert status in (400, 404), (path, status)
    assert b"root:" not in body
    assert "default-src 'none'" in headers["content-security-policy"]


def test_every_answer_has_a_strict_policy(web: WebServer, fleet: Fleet) -> None:
    for path in ("/", "/m/web01", "/metrics", "/api/", "/static/ketch.css",
                 f"/m/web01/file/home/latest/{home_path(fleet)}/blob.bin"):
        status, headers, _ = web.get(path)
        assert status == 200, path
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"


def test_without_the_token_every_page_and_api_answers_401(guarded: WebServer,
                                                          fleet: Fleet) -> None:
    home = home_path(fleet)
    paths = ["/", "/api/", "/api", "/metrics", "/m/web01", "/api/m/web01", "/m/web01/browse/",
             f"/m/web01/browse/home/latest/{home}/", f"/api/m/web01/browse/home/latest/{home}/",
             f"/m/web01/file/home/latest/{home}/blob.bin", f"/m/web01/tar/home/latest/{home}",
             "/m/web01/compare/home/latest..latest/", "/m/nosuch", "/nosuch"]
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"},
                        {"Cookie": "ketch_session=forged"}):
            status, _, body = guarded.get(path, headers)
            assert status == 401, (path, headers, status)
            # The login form (pages) or an error (API): nothing of the backups.
            assert b"data-machine" not in body and b"hostile:" not in body
            assert b"repo_bytes" not in body and b"ketch_repository" not in body
    for path in paths[:-2]:
        status, _, _ = guarded.get(path, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, path


def test_the_login_form_sets_a_session_cookie(guarded: WebServer) -> None:
    form = f"token={TOKEN}&next=/m/web01".encode()
    status, headers, _ = guarded.get("/login", {"Content-Type": "application/x-www-form-urlencoded"},
                                     "POST", form)
    assert status == 303 and headers["location"] == "/m/web01"
    cookie = headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie
    value = cookie.split(";")[0]
    assert guarded.get("/m/web01", {"Cookie": value})[0] == 200
    bad = guarded.get("/login", {"Content-Type": "application/x-www-form-urlencoded"}, "POST",
                      b"token=nope&next=//evil.example/")
    assert bad[0] == 401 and "set-cookie" not in bad[1]
    off_site = guarded.get("/login", {"Content-Type": "application/x-www-form-urlencoded"}, "POST",
                           f"token={TOKEN}&next=//evil.example/".encode())
    assert off_site[0] == 303 and off_site[1]["location"] == "/"


def test_bad_command_lines_say_one_line_and_exit_2(fleet: Fleet, tmp_path: Path) -> None:
    loose = tmp_path / "loose-token"
    loose.write_text(TOKEN)
    loose.chmod(0o644)
    short = tmp_path / "short-token"
    short.write_text("abc")
    short.chmod(0o600)
    cases = [("--root", tmp_path / "missing"), ("--root", fleet.root, "-d", fleet.root / "web01"),
             ("--root", fleet.root, "--listen", "nonsense"),
             ("--root", fleet.root, "--token-file", loose),
             ("--root", fleet.root, "--token-file", short),
             ("--root", fleet.root, "--token-file", tmp_path / "none"),
             ("-d", tmp_path), ("--root", fleet.root / "web01"),
             ("-r", "host:/srv/ketch")]
    for args in cases:
        got = run_ketch_plain("web", *args)
        err = got.stderr.decode()
        assert got.returncode == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)


def test_the_dashboard_writes_nothing(web: WebServer, fleet: Fleet) -> None:
    def snapshot() -> dict[str, tuple[int, int]]:
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in fleet.root.rglob("*") if p.is_file()}
    before = snapshot()
    for path in ("/", "/m/web01", "/metrics", f"/m/web01/tar/home/latest/{home_path(fleet)}"):
        assert web.get(path)[0] == 200
    assert snapshot() == before
    for m in ("web01", "mail01", "db01"):
        git_fsck(fleet.root / m)
