"""The dashboard in a real browser: Playwright driving Debian's Chromium
(never `playwright install`; recipe: shared/reference/test-services.md, 6).
What a person sees and clicks, what downloads they get, and that a hostile
file name runs no script."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import in_ci
from tests.services.web import WebServer
from tests.web.fleet import XSS_NAME, Fleet

CHROMIUM = "/usr/bin/chromium"
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-default-apps", "--no-first-run", "--disable-quic",
               "--disable-features=Translate,OptimizationHints,MediaRouter"]
TOKEN = "browser-test-token-0123456789abcdef"
RED = "rgb(207, 34, 46)"  # --bad in ketch.css
GREEN = "rgb(26, 127, 55)"



@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        if in_ci():
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip("no chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(10_000)
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    setattr(pg, "dialogs", dialogs)  # noqa: B010 - read back by the XSS test
    yield pg
    ctx.close()


def _color(page: Page, selector: str) -> str:
    return page.eval_on_selector(selector, "e => getComputedStyle(e).backgroundColor")


def test_the_overview_shows_a_stale_machine_and_a_failed_run_red(page: Page, web: WebServer,
                                                                 tmp_path: Path) -> None:
    p = page
    p.goto(web.url + "/")
    assert _color(p, 'tr[data-machine="db01"] .dot') == RED
    assert _color(p, 'tr[data-machine="mail01"] .dot') == RED
    assert _color(p, 'tr[data-machine="web01"] .dot') == GREEN
    assert "3 d" in p.inner_text('tr[data-machine="db01"] td.sets')
    assert "FAILED" in p.inner_text('tr[data-machine="mail01"]')
    rows = p.eval_on_selector_all("#fleet tbody tr", "rs => rs.map(r => r.dataset.machine)")
    assert rows[-1] == "web01"
    # The filter box (the page's only script, allowed by the policy) hides rows.
    p.fill("#filter", "db")
    visible = p.eval_on_selector_all("#fleet tbody tr:not(.hidden)", "rs => rs.map(r => r.dataset.machine)")
    assert visible == ["db01"]
    p.screenshot(path=str(tmp_path / "overview.png"), full_page=True)


def _to_home(p: Page, web: WebServer, fleet: Fleet) -> None:
    """Click from the overview down to web01's home in its latest save."""
    p.goto(web.url + "/")
    p.click('tr[data-machine="web01"] td.machine a')
    p.click("text=browse the saves")
    p.click('a:text-is("home/")')
    p.click('a:text-is("latest/")')
    for part in fleet.web01_home.parts[1:]:
        p.click(f'table.listing a:text-is("{part}/")')
    assert p.inner_text("nav.crumbs").endswith("home")


def test_clicking_through_to_a_file_downloads_its_bytes(page: Page, web: WebServer,
                                                        fleet: Fleet) -> None:
    p = page
    _to_home(p, web, fleet)
    row = p.locator("table.listing tr", has_text="blob.bin")
    with p.expect_download() as info:
        row.locator("a.download").click()
    got = Path(info.value.path()).read_bytes()
    assert got == (fleet.web01_home / "blob.bin").read_bytes()
    assert info.value.suggested_filename == "blob.bin"


def test_a_directory_downloads_as_a_tar_that_extracts_to_the_source(page: Page, web: WebServer,
                                                                    fleet: Fleet,
                                                                    tmp_path: Path) -> None:
    p = page
    _to_home(p, web, fleet)
    with p.expect_download() as info:
        p.click("a.tar")
    out = tmp_path / "x"
    with tarfile.open(fileobj=io.BytesIO(Path(info.value.path()).read_bytes())) as tar:
        tar.extractall(out, filter="fully_trusted")
    src = fleet.web01_home
    for dirpath, dirs, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        assert sorted(os.listdir(out / "home" / rel)) == sorted(dirs + files), rel
        for f in files:
            a = Path(dirpath) / f
            if not a.is_symlink():
                assert (out / "home" / rel / f).read_bytes() == a.read_bytes(), rel / f


def test_a_hostile_file_name_runs_no_script(page: Page, web: WebServer, fleet: Fleet) -> None:
    p = page
    _to_home(p, web, fleet)
    assert p.locator("table.listing td.name", has_text=XSS_NAME).count() == 1
    p.click(f'table.listing a:text-is("{XSS_NAME}")')
    assert XSS_NAME in p.inner_text("pre.text")
    p.wait_for_timeout(300)
    assert getattr(p, "dialogs") == []  # noqa: B009
    assert p.evaluate("document.querySelectorAll('main img').length") == 0
    with p.expect_download() as info:
        p.click("a.download")
    assert Path(info.value.path()).read_bytes() == (fleet.web01_home / XSS_NAME).read_bytes()


def test_with_a_token_the_browser_logs_in_and_nothing_shows_before(
        browser: Browser, fleet: Fleet, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    with WebServer.start(tmp_path / "w", "--root", fleet.root, "--token-file", token) as web:
        ctx = browser.new_context()
        p = ctx.new_page()
        for path in ("/", "/m/web01", "/api/", "/metrics", "/m/web01/browse/home/latest/"):
            resp = p.goto(web.url + path)
            assert resp.status == 401, path
            assert "web01" not in p.content() or path != "/"
        p.goto(web.url + "/m/web01")
        p.fill('input[name="token"]', "not-the-token")
        p.click('button[type="submit"]')
        assert "not the right one" in p.content()
        p.fill('input[name="token"]', TOKEN)
        p.click('button[type="submit"]')
        p.wait_for_url("**/m/web01")
        assert "browse the saves" in p.content()
        assert p.goto(web.url + "/api/").status == 200  # the cookie serves the API too
        ctx.close()
