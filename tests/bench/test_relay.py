"""The benchmark's latency relay (bench/ketchbench/relay.py) in front of a real
S3 server (SeaweedFS): boto3 through it gets back what it put, every request
counts once, also several on one keep-alive connection, and the bytes down
cover the objects read. No timing: the delay is only set, not measured."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.services.seaweedfs import SeaweedServer, required_weed

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _relay_module() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import ketchbench.relay

    return ketchbench.relay


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    exe = required_weed()
    pytest.importorskip("boto3")
    with SeaweedServer.start(tmp_path_factory.mktemp("weed"), exe) as server:
        yield server


def _client(weed: SeaweedServer, endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=weed.access_key,
                        aws_secret_access_key=weed.secret_key, region_name=weed.region,
                        config=Config(s3={"addressing_style": "path"}, max_pool_connections=1,
                                      retries={"total_max_attempts": 1}))


def test_put_get_through_the_relay(weed: SeaweedServer) -> None:
    relay_mod = _relay_module()
    bodies = {f"k{i}": os.urandom(n) for i, n in enumerate((0, 1000, 3 << 20))}
    with relay_mod.LatencyRelay(weed.host, weed.s3_port, delay=0.001) as relay:
        s3 = _client(weed, relay.endpoint)
        s3.create_bucket(Bucket="relay")
        for key, body in bodies.items():  # PUTs with a body: Expect: 100-continue
            s3.put_object(Bucket="relay", Key=key, Body=body)
        put = relay.counts()
        assert put.requests == 1 + len(bodies)
        assert put.methods == {"PUT": 1 + len(bodies)}
        assert put.bytes_up >= sum(map(len, bodies.values()))
        assert put.continues >= 1  # botocore's Expect: 100-continue on a body
        relay.reset()
        for key, body in bodies.items():  # one connection (pool of 1), kept alive
            assert s3.get_object(Bucket="relay", Key=key)["Body"].read() == body
        got = relay.counts()
        assert got.requests == len(bodies)
        assert got.methods == {"GET": len(bodies)}
        assert [t for _, t in got.targets] == [f"/relay/{k}" for k in bodies]
        assert got.bytes_down >= sum(map(len, bodies.values()))


def test_three_gets_on_one_connection_count_three(weed: SeaweedServer) -> None:
    """Raw HTTP/1.1 on one socket: three requests, three counted, each
    answered whole (an anonymous GET: SeaweedFS answers 403, with a body)."""
    import socket

    relay_mod = _relay_module()
    with relay_mod.LatencyRelay(weed.host, weed.s3_port, delay=0.001) as relay:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
            f = s.makefile("rb")
            for i in range(3):
                s.sendall(f"GET /nobucket/x{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                _read_response(f)
        c = relay.counts()
        assert c.requests == 3
        assert c.methods == {"GET": 3}


def _read_response(f: Any) -> bytes:
    """One response (with a Content-Length) off ``f``: its status line."""
    status = f.readline()
    assert status.startswith(b"HTTP/1.1 "), status
    length = None
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    assert length is not None
    f.read(length)
    return bytes(status)


def test_chunked_body_framed(weed: SeaweedServer) -> None:
    """A chunked request body (with an extension and a trailer) goes on
    whole: the request after it, on the same connection, is answered, and the
    two count two. (Anonymous: SeaweedFS refuses both, which is beside the
    point; what matters is that it reads them as two requests.)"""
    import socket

    relay_mod = _relay_module()
    chunks = [os.urandom(n) for n in (65536, 1, 70000)]
    body = b"".join(b"%x;ext=1\r\n" % len(c) + c + b"\r\n" for c in chunks)
    body += b"0\r\nx-trailer: 1\r\n\r\n"
    with relay_mod.LatencyRelay(weed.host, weed.s3_port, delay=0.0) as relay:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
            f = s.makefile("rb")
            s.sendall(b"PUT /nobucket/c HTTP/1.1\r\nHost: h\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n" + body)
            _read_response(f)
            s.sendall(b"GET /nobucket/d HTTP/1.1\r\nHost: h\r\n\r\n")
            _read_response(f)
        c = relay.counts()
        assert c.methods == {"PUT": 1, "GET": 1}
        assert [t for _, t in c.targets] == ["/nobucket/c", "/nobucket/d"]
        assert c.bytes_up >= len(body)
