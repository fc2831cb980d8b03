"""Messages between a process and the children it forked (a restore's workers,
a save's big-file writer): a pickled object, framed by its length, with file
descriptors passed alongside (SCM_RIGHTS). Only for a process's own children:
unpickling runs code, so nothing from another machine comes this way."""

from __future__ import annotations

import pickle
import socket
import struct
from collections.abc import Mapping, Sequence

from ketch.errors import KetchError

# An exception as sent: (kind, errno, message).
Error = tuple[str, int, str]

_LEN = struct.Struct("!Q")
# Linux takes at most 253 descriptors in one message.
_FDS_PER_MESSAGE = 200


def send(sock: socket.socket, obj: object, fds: Sequence[int] = ()) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    groups = [list(fds[i : i + _FDS_PER_MESSAGE]) for i in range(0, len(fds), _FDS_PER_MESSAGE)]
    head = _LEN.pack(len(data)) + struct.pack("!I", len(groups))
    socket.send_fds(sock, [head], groups[0] if groups else [])
    for g in groups[1:]:
        socket.send_fds(sock, [b"+"], g)
    sock.sendall(data)


def _exact(sock: socket.socket, n: int) -> bytes | None:
    parts: list[bytes] = []
    while n:
        got = sock.recv(min(n, 1 << 20))
        if not got:
            return None
        parts.append(got)
        n -= len(got)
    return b"".join(parts)


def recv(sock: socket.socket) -> tuple[object, list[int]] | None:
    """(object, descriptors), or None at the end of the stream."""
    head, fds, _, _ = socket.recv_fds(sock, _LEN.size + 4, _FDS_PER_MESSAGE)
    if not head:
        return None
    if len(head) < _LEN.size + 4:
        rest = _exact(sock, _LEN.size + 4 - len(head))
        if rest is None:
            return None
        head += rest
    (size,) = _LEN.unpack_from(head)
    (groups,) = struct.unpack_from("!I", head, _LEN.size)
    for _ in range(max(0, groups - 1)):
        _, more, _, _ = socket.recv_fds(sock, 1, _FDS_PER_MESSAGE)
        fds.extend(more)
    data = _exact(sock, size)
    if data is None:
        return None
    return pickle.loads(data), fds


def describe(e: BaseException, kinds: Mapping[str, type[Exception]] | None = None) -> Error:
    """An exception to send: an OSError keeps its errno, one of `kinds` its
    class; anything else comes back as a KetchError with its message."""
    if isinstance(e, OSError):
        return "os", e.errno or 0, e.strerror or str(e)
    for kind, cls in (kinds or {}).items():
        if isinstance(e, cls):
            return kind, 0, str(e)
    return "ketch", 0, str(e) or type(e).__name__


def rebuild(err: Error, kinds: Mapping[str, type[Exception]] | None = None) -> Exception:
    """The exception `describe` sent."""
    kind, num, msg = err
    if kind == "os":
        return OSError(num, msg)
    return (kinds or {}).get(kind, KetchError)(msg)
