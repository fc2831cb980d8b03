"""bup's line-and-frame protocol (bup-format.md 6.3): a command line, its data,
then `\\nok\\n` or `\\nerror MESSAGE\\n`.

`Conn` buffers both directions itself (not io.Buffered*) so that `has_input()`
can tell, without blocking, whether the peer has said something: the client
polls for the server's `index` suggestions between object frames.
"""

from __future__ import annotations

import os
import re
import select
import struct
from collections.abc import Iterator

from ketch.errors import KetchError

SUSPEND = 0xFFFFFFFF
# What the server says every so often while `gc` runs (a connection idle for
# the length of a big gc may be dropped by a firewall); the client skips it.
GC_KEEPALIVE_LINE = b".\n"
_U32 = struct.Struct("!I")
# The only idx names either side accepts: they become file names in a pack
# directory or the client's cache.
IDX_NAME = re.compile(rb"pack-[0-9a-f]{40}\.idx")


class ProtocolError(KetchError):
    """The peer said something the protocol does not allow, or went away."""


class RemoteError(KetchError):
    """The peer answered a command with `error MESSAGE`."""


# How `send-index` says that the idx asked for is gone (gc removed its pack
# since `list-indexes`): the client caches nothing and goes on.
GONE = "gone: "


class ConnectionLost(ProtocolError):
    """End of stream where more was expected."""


class Conn:
    def __init__(self, rfd: int, wfd: int, *, peer: str = "peer") -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.peer = peer
        self._rbuf = bytearray()
        self._rpos = 0
        self._wbuf: list[bytes | memoryview] = []
        self._wlen = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.closed = False

    def close(self) -> None:
        """Stop using the file descriptors (their owner closes them)."""
        self.closed = True
        self._wbuf.clear()
        self._wlen = 0

    # -- writing ------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        if data:
            self._wbuf.append(data)
            self._wlen += len(data)
            if self._wlen >= 1 << 20:
                self.flush()

    def flush(self) -> None:
        if not self._wbuf:
            return
        if self.closed:
            raise ConnectionLost(f"connection to {self.peer} closed")
        data = memoryview(b"".join(self._wbuf))
        self._wbuf.clear()
        self._wlen = 0
        try:
            while data:
                n = os.write(self.wfd, data)
                data = data[n:]
                self.bytes_sent += n
        except (BrokenPipeError, ConnectionResetError):
            raise ConnectionLost(f"connection to {self.peer} lost while sending") from None

    def ok(self) -> None:
        self.write(b"\nok\n")
        self.flush()

    def error(self, message: str) -> None:
        self.write(b"\nerror " + re.sub(r"\s+", " ", message).strip().encode(errors="replace")
                   + b"\n")
        self.flush()

    # -- reading ------------------------------------------------------------

    def _avail(self) -> int:
        return len(self._rbuf) - self._rpos

    def _fill(self) -> bool:
        """Read what the peer has sent (blocking); False at end of stream."""
        self.flush()  # never wait for an answer to a request still in our buffer
        if self.closed:
            return False
        if self._rpos and self._rpos == len(self._rbuf):
            self._rbuf.clear()
            self._rpos = 0
        elif self._rpos > 1 << 20:
            del self._rbuf[: self._rpos]
            self._rpos = 0
        try:
            chunk = os.read(self.rfd, 1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return False
        self.bytes_received += len(chunk)
        self._rbuf += chunk
        return True

    def has_input(self) -> bool:
        if self._avail():
            return True
        if self.closed:
            return False
        r, _, _ = select.select([self.rfd], [], [], 0)
        return bool(r)

    def read(self, n: int) -> bytes:
        """Exactly n bytes, or ConnectionLost."""
        while self._avail() < n:
            if not self._fill():
                raise ConnectionLost(f"connection to {self.peer} lost "
                                     f"(wanted {n} bytes, got {self._avail()})")
        out = bytes(self._rbuf[self._rpos : self._rpos + n])
        self._rpos += n
        return out

    def peek(self, n: int) -> bytes:
        """The next n bytes (fewer at end of stream), left to be read."""
        while self._avail() < n:
            if not self._fill():
                break
        return bytes(self._rbuf[self._rpos : self._rpos + n])

    def try_read(self, n: int) -> bytes:
        """Exactly n bytes, or fewer only at end of stream (b"" at a clean end)."""
        while self._avail() < n:
            if not self._fill():
                break
        out = bytes(self._rbuf[self._rpos : self._rpos + n])
        self._rpos += len(out)
        return out

    def read_u32(self) -> int:
        value: int = _U32.unpack(self.read(4))[0]
        return value

    def readline(self, limit: int = 1 << 16) -> bytes:
        """One line with its b"\\n"; b"" at end of stream."""
        while True:
            i = self._rbuf.find(b"\n", self._rpos)
            if i >= 0:
                out = bytes(self._rbuf[self._rpos : i + 1])
                self._rpos = i + 1
                return out
            if self._avail() > limit:
                raise ProtocolError(f"line from {self.peer} longer than {limit} bytes")
            if not self._fill():
                out = bytes(self._rbuf[self._rpos :])
                self._rpos = len(self._rbuf)
                return out

    def lines_until_blank(self) -> Iterator[bytes]:
        """Lines (without b"\\n") up to an empty line."""
        while True:
            line = self.readline()
            if not line:
                raise ConnectionLost(f"connection to {self.peer} lost")
            if line == b"\n":
                return
            yield line[:-1]

    def check_ok(self) -> None:
        """Wait for `ok` (skipping empty lines); RemoteError on `error MSG`."""
        while True:
            line = self.readline()
            if not line:
                raise ConnectionLost(f"connection to {self.peer} lost")
            line = line.rstrip(b"\n")
            if not line:
                continue
            if line == b"ok":
                return
            if line.startswith(b"error "):
                raise RemoteError(line[6:].decode(errors="replace"))
            raise ProtocolError(f"unexpected line from {self.peer}: {shown(line, 80)}")


def shown(data: bytes, limit: int = 100) -> str:
    """A peer's bytes as one line of text for a message: at most `limit`
    bytes, what is not printable UTF-8 as \\xNN escapes."""
    text = data[:limit].decode(errors="backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text) + (
        "…" if len(data) > limit else "")


def u32(n: int) -> bytes:
    return _U32.pack(n)
