"""A hostile server, run by the client as its ssh command (KETCH_RSH).

    KETCH_RSH="python hostile_peer.py MODE" ketch ls -r host:/path/repo

The client runs it as `python hostile_peer.py MODE host -- ketch server`.
Modes that speak the protocol serve the real repository the client names
(ketch's own server) and lie in one answer; the others are not a server at
all. Written for tests/remote/test_hostile_client.py.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import zlib
from collections.abc import Callable

from ketch.errors import KetchError
from ketch.git import objects as gobj
from ketch.git.packenc import encode_entry, entry_header
from ketch.remote import stored
from ketch.remote.protocol import Conn, u32
from ketch.remote.server import Server, ServerOptions

MODE = sys.argv[1]
ESCAPES = [b"../../../escaped.idx", b"/tmp/escaped.idx", b"..", b"pack-\0.idx",
           b"\xff\xfe.idx", b"sub/pack-" + b"a" * 40 + b".idx"]


_HEAD = struct.Struct("!cI")
# cat-stored: lies in the entry sent (type, content, entry as sent -> entry) ...
STORED_ENTRIES: dict[str, Callable[[int, bytes, bytes], bytes]] = {
    "wrong-content": lambda t, d, r: encode_entry(t, d[:-1] + bytes([d[-1] ^ 1]), 1)[0],
    "other-object": lambda t, d, r: encode_entry(gobj.BLOB, b"some other blob\n", 1)[0],
    "delta": lambda t, d, r: bytes([0x60 | 5]) + zlib.compress(b"12345"),
    # says 10 bytes, inflates to a megabyte
    "bomb": lambda t, d, r: entry_header(t, 10) + zlib.compress(bytes(1 << 20)),
    "short": lambda t, d, r: entry_header(t, len(d) + 1) + zlib.compress(d),
    "trailing": lambda t, d, r: r + b"extra",
    "bad-zlib": lambda t, d, r: r[:2] + bytes(len(r) - 2),
    "huge-header": lambda t, d, r: entry_header(t, 1 << 40) + zlib.compress(d),
}
# ... and in its frame (entry -> frame).
STORED_FRAMES: dict[str, Callable[[bytes], bytes]] = {
    "bad-kind": lambda r: _HEAD.pack(b"Z", len(r)) + r,
    "huge": lambda r: _HEAD.pack(b"E", 0xFFFFFFFF) + r,
    "long-message": lambda r: _HEAD.pack(b"X", 1 << 20) + b"x" * 100,
    "message": lambda r: _HEAD.pack(b"X", 5) + b"oops!",
    "missing-with-body": lambda r: _HEAD.pack(b"M", 3) + b"abc",
}


class Hostile(Server):
    def __init__(self, conn: Conn, opts: ServerOptions) -> None:
        super().__init__(conn, opts)
        if MODE.startswith("cat:"):  # a lie in bup's cat-batch: do not offer ketch's own
            del self.commands[stored.COMMAND]

    def cat_stored(self, arg: bytes) -> None:
        if not MODE.startswith("stored:"):
            return super().cat_stored(arg)
        how = MODE[7:]
        ids = stored.read_request(self.conn, arg.strip())
        if how == "refused":  # the whole request refused, as a real error reply
            raise KetchError("no reading today")
        repo = self._repo()
        for oid in ids:
            t, data = repo.read(oid)
            raw = encode_entry(t, data, 1)[0]
            if how in STORED_ENTRIES:
                raw = STORED_ENTRIES[how](t, data, raw)
            if how == "truncated":
                self.conn.write(_HEAD.pack(b"E", len(raw) + 1000) + raw)
                self.conn.flush()
                os._exit(0)
            lie = STORED_FRAMES.get(how)
            self.conn.write(lie(raw) if lie else _HEAD.pack(b"E", len(raw)) + raw)
        self.conn.ok()
        return None

    def list_indexes(self, arg: bytes) -> None:
        if MODE.startswith("index-name:"):
            self.conn.write(ESCAPES[int(MODE.split(":")[1])] + b"\n")
            self.conn.ok()
        elif MODE == "index-huge":
            self.conn.write(b"pack-" + b"b" * 40 + b".idx\n")
            self.conn.ok()
        else:
            super().list_indexes(arg)

    def send_index(self, arg: bytes) -> None:
        if MODE == "index-huge":
            # 4 GiB announced, a few bytes sent, then the connection ends.
            self.conn.write(u32(0xFFFFFFFF) + b"\377tOc" + bytes(100))
            self.conn.flush()
            os._exit(0)
        super().send_index(arg)

    def cat_batch(self, arg: bytes) -> None:
        if not MODE.startswith("cat:"):
            return super().cat_batch(arg)
        how = MODE[4:]
        specs = list(self.conn.lines_until_blank())
        repo = self._repo()
        for spec in specs:
            oid = bytes.fromhex(spec.decode())
            t, data = repo.read(oid)
            name, size = gobj.TYPE_NAMES[t], b"%d" % len(data)
            if how == "wrong-content":
                data = data[:-1] + bytes([data[-1] ^ 1])
            elif how == "other-object":
                data, t = b"some other blob\n", gobj.BLOB
                name, size = b"blob", b"%d" % len(data)
            elif how == "wrong-id":
                oid = hashlib.sha1(b"x").digest()
            elif how == "non-numeric":
                size = b"12x"
            elif how == "negative":
                size = b"-5"
            elif how == "huge":
                size = b"%d" % (1 << 50)
            elif how == "unknown-type":
                name = b"delta"
            elif how == "short-line":
                self.conn.write(oid.hex().encode() + b" " + name + b"\n")
                continue
            elif how == "binary-line":
                self.conn.write(b"\xff\xfe\x00 blob 3\nabc")
                continue
            elif how == "truncated":
                self.conn.write(b"%s %s %d\n" % (oid.hex().encode(), name, len(data) + 1000)
                                + data)
                self.conn.flush()
                os._exit(0)
            self.conn.write(oid.hex().encode() + b" " + name + b" " + size + b"\n" + data)
        self.conn.ok()
        return None

    def read_ref(self, arg: bytes) -> None:
        if MODE == "bad-ref":
            self.conn.write(b"zz\xffnot-hex\n")
            self.conn.ok()
        else:
            super().read_ref(arg)

    def refs(self, arg: bytes) -> None:
        if MODE == "bad-ref":
            list(self.conn.lines_until_blank())
            self.conn.write(b"not-hex refs/heads/host\n\n")
            self.conn.ok()
        else:
            super().refs(arg)


def main() -> None:
    out = sys.stdout.buffer
    if MODE == "hello":
        out.write(b"hello\n")
        return
    if MODE == "garbage":
        out.write(bytes(range(1, 10)) * 20000)
        return
    if MODE == "help-then-garbage":
        sys.stdin.buffer.readline()
        out.write(b"Commands:\n    help\n\n\nok\n\x00\x01\x02garbage without end" * 5000)
        return
    wfd = os.dup(out.fileno())
    os.dup2(sys.stderr.fileno(), out.fileno())
    Hostile(Conn(sys.stdin.fileno(), wfd, peer="client"), ServerOptions()).run()


if __name__ == "__main__":
    main()
