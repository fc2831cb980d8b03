"""`ketch web` as a real process: uvicorn on a free port of 127.0.0.1, serving
a root of repositories, reached over HTTP as a browser or Prometheus would.

    with WebServer.start(tmp_path, "--root", root) as web:
        status, headers, body = web.get("/api/")
"""

from __future__ import annotations

import http.client
import socket
import sys
from pathlib import Path
from typing import Self

from tests.conftest import _subprocess_env
from tests.services.process import ServiceProcess, free_port

START_TIMEOUT = 30.0
_PORT_ATTEMPTS = 5


class WebServer(ServiceProcess):
    name = "ketch web"

    def __init__(self, log_path: Path, args: tuple[str | Path, ...]) -> None:
        super().__init__(log_path)
        self.args = [str(a) for a in args]
        self.port = 0

    @classmethod
    def start(cls, workdir: Path, *args: str | Path) -> Self:
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(workdir / "web.log", args)._start()

    def _launch(self) -> None:
        def spawn() -> str:
            self.port = free_port()
            env = _subprocess_env(None)
            self.spawn([sys.executable, "-m", "ketch", "web", *self.args,
                        "--listen", f"127.0.0.1:{self.port}"], env=env)
            return f"ketch web on 127.0.0.1:{self.port}"

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        self.start_on_free_ports(spawn, answers, tries=_PORT_ATTEMPTS, timeout=START_TIMEOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None,
            method: str = "GET", body: bytes | None = None
            ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) of one request; `path`
        goes on the wire as given (already percent-encoded, or not)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.stop_process()
