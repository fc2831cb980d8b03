"""The dashboard tests' fleet and server (one of each per test module), and
the S3 server of the offsite tests, for the dashboard served from a mirror."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.offsite.conftest import s3_env, s3_server, s3_url
from tests.services.web import WebServer
from tests.web.fleet import Fleet, make_fleet, run_ketch_plain

__all__ = ["s3_env", "s3_server", "s3_url"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return make_fleet(tmp_path_factory.mktemp("fleet"), run_ketch_plain)


@pytest.fixture(scope="module")
def web(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    with WebServer.start(tmp_path_factory.mktemp("web"), "--root", fleet.root) as w:
        yield w
