"""What `ketch web` serves besides a server's root: one repository (-d), and
a mirror in S3 (-r s3://), which a dashboard reads in place after the server
is lost. The mirror reports of the pushes show on the server's dashboard."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.services.web import WebServer
from tests.web.fleet import make_fleet, run_ketch_plain


def test_one_repository_is_served_under_its_directory_name(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, run_ketch_plain)
    with WebServer.start(tmp_path / "w", "-d", fleet.root / "web01") as web:
        status, _, body = web.get("/api/")
        assert status == 200
        assert [m["machine"] for m in json.loads(body)["machines"]] == ["web01"]
        assert web.get("/m/db01")[0] == 404


@pytest.mark.usefixtures("s3_env")
def test_a_mirror_is_served_from_s3_with_the_push_recorded(tmp_path: Path, s3_url: str) -> None:
    fleet = make_fleet(tmp_path, run_ketch_plain)
    run_ketch_plain("mirror", "push", "--all", fleet.root, s3_url, check=True)
    run_ketch_plain("mirror", "verify", s3_url, "--root", fleet.root, check=True)
    # A name the root has no repository for is said, and is no failure of the verify.
    (fleet.root / "db01").rename(fleet.root / "db01-moved")
    odd = run_ketch_plain("mirror", "verify", s3_url, "db01", "--root", fleet.root)
    assert odd.returncode == 1 and b"db01: no repository" in odd.stderr, odd.stderr
    (fleet.root / "db01-moved").rename(fleet.root / "db01")
    with WebServer.start(tmp_path / "local", "--root", fleet.root) as web:
        by = {m["machine"]: m for m in json.loads(web.get("/api/")[2])["machines"]}
        for m in ("web01", "mail01", "db01"):
            assert by[m]["push"]["ok"] is True and by[m]["verify"]["ok"] is True, by[m]
            assert by[m]["push"]["time"] >= fleet.now - 5
        status, _, page = web.get("/")
        row = page.split(b'data-machine="web01"')[1].split(b"</tr>")[0]
        assert row.count(b'<span class="s-ok">ok</span>') == 2  # push and verify; no drill, fsck
    with WebServer.start(tmp_path / "mirror", "-r", s3_url) as web:
        status, _, body = web.get("/api/")
        assert status == 200, body[:300]
        by = {m["machine"]: m for m in json.loads(body)["machines"]}
        assert set(by) == {"web01", "mail01", "db01"}
        assert by["db01"]["status"] == "bad" and by["mail01"]["run"]["exit_code"] == 2
        assert by["web01"]["repo_bytes"] > 200_000
        home = quote(str(fleet.web01_home).lstrip("/"))
        status, _, got = web.get(f"/m/web01/file/home/latest/{home}/blob.bin")
        assert status == 200
        assert got == (fleet.web01_home / "blob.bin").read_bytes()
        assert web.get("/metrics")[0] == 200


@pytest.mark.usefixtures("s3_env")
def test_an_encrypted_mirror_is_served_with_its_key(tmp_path: Path, s3_url: str) -> None:
    fleet = make_fleet(tmp_path, run_ketch_plain)
    key = tmp_path / "mirror.key"
    run_ketch_plain("mirror", "keygen", key, check=True)
    url = f"{s3_url}/enc"
    run_ketch_plain("mirror", "push", "--all", fleet.root, url, "--encrypt-key", key, check=True)
    with WebServer.start(tmp_path / "w", "-r", url, "--encrypt-key", key) as web:
        status, _, body = web.get("/api/")
        assert status == 200, body[:300]
        assert {m["machine"] for m in json.loads(body)["machines"]} == {"web01", "mail01", "db01"}
        home = quote(str(fleet.web01_home).lstrip("/"))
        status, _, got = web.get(f"/m/web01/file/home/latest/{home}/blob.bin")
        assert status == 200 and got == (fleet.web01_home / "blob.bin").read_bytes()
