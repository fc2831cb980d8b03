"""A latency relay: a TCP proxy on 127.0.0.1 in front of an HTTP/1.1 server
(the benchmark's SeaweedFS S3 gateway) that waits ``delay`` seconds before
passing on each request, and counts requests and bytes each way.

A real S3 endpoint is tens of milliseconds away; SeaweedFS on the loopback is
not, so a client that makes one request too many per object looks just as
fast there. The delay is per request, not per connection: boto3 keeps its
connections alive, so the relay reads the client's side as HTTP/1.1 (request
head, then a body of Content-Length bytes or chunked) and waits before
forwarding each head. The server's side is copied as it comes, unparsed
(counted in ``bytes_down``). ``Expect: 100-continue`` is answered by the relay
itself (the header is dropped on the way), so that the body always follows the
head, whatever the server would have said first.

    with LatencyRelay("127.0.0.1", weed.s3_port, delay=0.030) as relay:
        ... endpoint_url=relay.endpoint ...
        relay.counts().requests
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import IO

DEFAULT_DELAY = 0.030  # seconds added to each request: a nearby S3 region
_MAX_HEAD = 64 * 1024  # a request head longer than this ends the connection
_BLOCK = 1 << 16


@dataclass
class RelayCount:
    """What went through the relay since it started (or since ``reset``)."""

    requests: int = 0
    bytes_up: int = 0  # client -> server, heads and bodies
    bytes_down: int = 0  # server -> client, heads and bodies
    continues: int = 0  # requests with Expect: 100-continue (answered by the relay)
    methods: dict[str, int] = field(default_factory=dict)  # requests by method
    targets: list[tuple[str, str]] = field(default_factory=list)  # (method, path) in order

    def as_dict(self) -> dict[str, object]:
        return {"requests": self.requests, "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down, "continues": self.continues,
                "methods": dict(self.methods)}


class _BadRequest(Exception):
    """The client's bytes are not HTTP/1.1 as the relay reads it."""


class LatencyRelay:
    """The relay; a context manager (``start``/``close`` without one)."""

    def __init__(self, host: str, port: int, delay: float = DEFAULT_DELAY) -> None:
        self.target = (host, port)
        self.delay = delay
        self._lock = threading.Lock()
        self._count = RelayCount()
        self._open: set[socket.socket] = set()
        self._sock: socket.socket | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LatencyRelay:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._serve, args=(self._sock,), name="relay", daemon=True).start()
        return self

    def close(self) -> None:
        """Stop listening and cut every connection still open."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._lock:
            socks, self._open = list(self._open), set()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> LatencyRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counts(self) -> RelayCount:
        """A copy of the counts so far."""
        with self._lock:
            c = self._count
            return RelayCount(c.requests, c.bytes_up, c.bytes_down, c.continues,
                              dict(c.methods), list(c.targets))

    def reset(self) -> None:
        with self._lock:
            self._count = RelayCount()

    # -- connections ---------------------------------------------------------

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.update(socks)

    def _connection(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._track(client, server)
        back = threading.Thread(target=self._downstream, args=(server, client), daemon=True)
        back.start()
        try:
            with client.makefile("rb") as reader:
                while self._request(reader, client, server):
                    pass
        except (OSError, _BadRequest):
            pass
        finally:
            try:
                server.shutdown(socket.SHUT_WR)  # the server answers, then closes
            except OSError:
                pass
            back.join()
            with self._lock:
                self._open.discard(client)
                self._open.discard(server)
            client.close()
            server.close()

    def _downstream(self, server: socket.socket, client: socket.socket) -> None:
        """The server's bytes to the client, counted, until the server closes."""
        try:
            while data := server.recv(_BLOCK):
                # Counted before it is sent: a client that has read it all may
                # ask for the counts at once (a send failure overstates by a block).
                with self._lock:
                    self._count.bytes_down += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            try:
                client.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _up(self, server: socket.socket, data: bytes) -> None:
        with self._lock:
            self._count.bytes_up += len(data)
        server.sendall(data)

    def _request(self, reader: IO[bytes], client: socket.socket, server: socket.socket) -> bool:
        """One request from ``reader``: its head read whole, the delay, then
        head and body on to the server. False at the client's end of stream
        between two requests."""
        lines: list[bytes] = []
        size = 0
        while True:
            line = reader.readline(_MAX_HEAD + 1)
            if not line:
                if lines:
                    raise _BadRequest("end of stream inside a request head")
                return False
            size += len(line)
            if size > _MAX_HEAD:
                raise _BadRequest("request head too long")
            if line in (b"\r\n", b"\n"):
                if not lines:
                    continue  # a stray empty line between requests (RFC 9112 2.2)
                break
            lines.append(line)
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise _BadRequest(f"not an HTTP/1.x request line: {lines[0][:100]!r}")
        method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
        headers = {}
        kept = [lines[0]]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            headers[key] = value.strip()
            if key == b"expect" and value.strip().lower() == b"100-continue":
                continue  # answered here, below
            kept.append(line)
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        try:
            length = 0 if chunked else int(headers.get(b"content-length", b"0"))
        except ValueError:
            raise _BadRequest("bad Content-Length") from None
        with self._lock:
            c = self._count
            c.requests += 1
            c.methods[method] = c.methods.get(method, 0) + 1
            c.targets.append((method, target))
            c.continues += len(kept) < len(lines)
        if self.delay > 0:
            time.sleep(self.delay)
        if len(kept) < len(lines):
            # Sent before the head goes on, so nothing of the server's answer
            # can come ahead of it on the client's connection.
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._up(server, b"".join(kept) + b"\r\n")
        if chunked:
            self._chunked_body(reader, server)
        else:
            self._copy(reader, server, length)
        return True

    def _copy(self, reader: IO[bytes], server: socket.socket, n: int) -> None:
        while n > 0:
            data = reader.read(min(n, _BLOCK))
            if not data:
                raise _BadRequest("end of stream inside a request body")
            self._up(server, data)
            n -= len(data)

    def _chunked_body(self, reader: IO[bytes], server: socket.socket) -> None:
        """Chunks (size line, data, CRLF) up to the last, empty one and its
        trailer section, passed on as they are."""
        while True:
            line = reader.readline(_MAX_HEAD + 1)
            if not line.endswith(b"\n"):
                raise _BadRequest("bad chunk size line")
            self._up(server, line)
            try:
                n = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise _BadRequest(f"bad chunk size {line[:40]!r}") from None
            if n == 0:
                break
            self._copy(reader, server, n + 2)  # the data and its CRLF
        while True:  # trailers, up to the empty line
            line = reader.readline(_MAX_HEAD + 1)
            if not line.endswith(b"\n"):
                raise _BadRequest("end of stream inside the trailers")
            self._up(server, line)
            if line in (b"\r\n", b"\n"):
                return
