"""`ketch server`: one repository served over stdin/stdout, speaking bup 0.33's
protocol (bup-format.md 6.4) so that both ketch and bup clients can use it.

Differences from `bup server`, all invisible to a bup client:
- a failed command answers `error MESSAGE` and the session goes on, unless the
  stream can no longer be trusted (a bad object frame);
- objects received are checked (CRC, and that the id is the hash of the
  content) before they are written;
- when the connection drops in the middle of `receive-objects-v2`, the complete
  objects already received are kept in a finished pack, so a resumed save does
  not send them again; the half frame is dropped;
- `--restrict-to DIR` confines every path to DIR and `--append-only` refuses to
  delete or rewind refs (bup has neither);
- `gc` and `fsck` (ketch's own commands, remote/serverjobs.py) collect the
  repository's garbage (a key that is not append-only) and check it where its
  packs are; `par2` has parity made for the packs the session writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ketch.errors import CorruptObject, KetchError, NotARepository, ObjectNotFound, RefConflict
from ketch.git import entry
from ketch.git import objects as gobj
from ketch.git.deflate import crc32
from ketch.git.refnames import check_ref_name
from ketch.remote.protocol import (
    GONE,
    IDX_NAME,
    SUSPEND,
    Conn,
    ConnectionLost,
    ProtocolError,
    shown,
    u32,
)
from ketch.remote.serverjobs import Refused, ServerJobs
from ketch.remote.stored import StoredReader, read_request

if TYPE_CHECKING:
    from ketch.git.pack import PackWriter
    from ketch.localrepo import LocalRepository
    from ketch.vfs import VFS

ZERO_HEX = b"0" * 40




@dataclass
class ServerOptions:
    restrict_to: str | None = None
    append_only: bool = False
    default_dir: str | None = None


# A frame is at most 2 GiB (see _frame_length), and no object decoded from one
# may be larger: a small frame cannot make the server hold more than a big one.
_MAX_OBJECT = 1 << 31


def decode_entry(encoded: bytes) -> tuple[int, bytes]:
    """(type, content) of one undeltified pack entry, as a client sends it."""
    try:
        return entry.decode_whole(encoded, _MAX_OBJECT)
    except CorruptObject as e:
        raise ProtocolError(f"object refused: {e}") from None


class Server(ServerJobs):
    def __init__(self, conn: Conn, opts: ServerOptions) -> None:
        self.conn = conn
        self.opts = opts
        self.repo: LocalRepository | None = None
        self._vfs: VFS | None = None
        self._stored: StoredReader | None = None
        self.suspended: PackWriter | None = None
        self._streaming = False  # inside receive-objects-v2's object frames
        # The client's save holds no lease of its own on this repository: the
        # session holds one for it, from its first look at the idx files to the end.
        self._lease = contextlib.ExitStack()
        self._leased = False
        self.root = os.path.realpath(opts.restrict_to) if opts.restrict_to else None
        self.commands: dict[bytes, Callable[[bytes], None]] = {
            b"help": self.help, b"init-dir": self.init_dir, b"set-dir": self.set_dir,
            b"list-indexes": self.list_indexes, b"send-index": self.send_index,
            b"receive-objects-v2": self.receive_objects, b"read-ref": self.read_ref,
            b"update-ref": self.update_ref, b"join": self.join, b"cat": self.join,
            b"cat-batch": self.cat_batch, b"refs": self.refs, b"rev-list": self.rev_list,
            b"resolve": self.resolve, b"gc": self.gc, b"fsck": self.fsck,
            b"par2": self.par2, b"cat-stored": self.cat_stored,
        }

    # -- the loop -------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                line = self.conn.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    continue
                name, _, arg = line.partition(b" ")
                if name == b"quit":
                    return
                handler = self.commands.get(name)
                if handler is None or b"\0" in arg:  # no path or ref holds a NUL
                    what = "unknown server command" if handler is None else "NUL byte in the command"
                    self.conn.error(f"{what}: {shown(line)}")
                    continue
                try:
                    handler(arg)
                except (ProtocolError, ConnectionLost):
                    raise
                except (KetchError, OSError) as e:
                    self.conn.error(_reason(e))
        finally:
            if self.suspended is not None:
                self._finish(self.suspended)
            self._lease.close()
            if self._stored is not None:
                self._stored.close()
            if self.repo is not None:
                self.repo.close()

    # -- repository selection and confinement ----------------------------------

    def confine(self, arg: bytes) -> str:
        path = os.fsdecode(arg)
        if self.root is None:
            return path
        if ".." in path.split("/"):
            raise Refused(f"{path}: '..' is not allowed in a repository path")
        full = path if os.path.isabs(path) else os.path.join(self.root, path)
        real = os.path.realpath(full)
        if real != self.root and not real.startswith(self.root.rstrip("/") + "/"):
            raise Refused(f"{path}: outside the repository this key may use")
        return real

    def _select(self, path: str) -> None:
        if self.suspended is not None:
            raise KetchError("cannot change repository during receive-objects-v2")
        from ketch.localrepo import LocalRepository

        repo = LocalRepository(path)
        self._lease.close()
        self._leased = False
        if self.repo is not None:
            self.repo.close()
        if self._stored is not None:
            self._stored.close()
            self._stored = None
        self.repo = repo
        self._vfs = None

    def _repo(self) -> LocalRepository:
        if self.repo is None:
            if self.root is not None:
                path = self.root
            else:
                from ketch.localrepo import default_repo_path

                path = self.opts.default_dir or default_repo_path(None)
            self._select(path)
        assert self.repo is not None
        return self.repo

    def _writing(self) -> LocalRepository:
        """The repository, for a session that will (or may) write to it."""
        repo = self._repo()
        if not self._leased:
            self._lease.enter_context(repo.writing())
            self._leased = True
        return repo

    def help(self, _: bytes) -> None:
        names = sorted([*self.commands, b"quit"])
        self.conn.write(b"Commands:\n" + b"".join(b"    " + n + b"\n" for n in names))
        self.conn.ok()

    def init_dir(self, arg: bytes) -> None:
        from ketch.localrepo import init_repository

        path = self.confine(arg)
        init_repository(path)  # allowed with --append-only: creating removes nothing
        self._select(path)
        self.conn.ok()

    def set_dir(self, arg: bytes) -> None:
        path = self.confine(arg)
        try:
            self._select(path)
        except NotARepository:
            raise NotARepository(f"{os.fsdecode(arg)}: not a repository") from None
        self.conn.ok()

    # -- objects in -----------------------------------------------------------

    def _dumb(self) -> bool:
        return os.path.exists(os.path.join(self._repo().path, "bup-dumb-server"))

    def list_indexes(self, _: bytes) -> None:
        repo = self._writing()
        suffix = b" load" if self._dumb() else b""
        for name in sorted(os.listdir(repo.pack_dir)):
            if name.endswith(".idx"):
                self.conn.write(os.fsencode(name) + suffix + b"\n")
        self.conn.ok()

    def send_index(self, arg: bytes) -> None:
        repo = self._writing()
        name = os.fsdecode(arg)
        if not IDX_NAME.fullmatch(arg):
            raise Refused(f"bad index name: {shown(arg)}")
        try:
            with open(os.path.join(repo.pack_dir, name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            # gc removed its pack since the client listed it (what it held
            # that is still needed is in a pack of gc's): not an error.
            raise KetchError(f"{GONE}{name}") from None
        self.conn.write(u32(len(data)))
        self.conn.write(data)
        self.conn.ok()

    def receive_objects(self, _: bytes) -> None:
        repo = self._writing()
        w, self.suspended = self.suspended, None
        self._streaming = True
        try:
            if w is None:
                w = repo.writer()
            self._receive(repo, w)
        except (KetchError, OSError) as e:
            if isinstance(e, ProtocolError) or not self._streaming:
                raise
            # The client streams without waiting for answers: say why now (it
            # polls between batches), then skip its frames up to the end of the
            # stream so that the session stays in step.
            self.conn.error(_reason(e))
            self._skip_stream()

    def _receive(self, repo: LocalRepository, w: PackWriter) -> None:
        dumb = self._dumb()
        suggested: set[str] = set()
        conn = self.conn
        sha1 = hashlib.sha1
        try:
            while True:
                n = self._frame_length()
                if n in (0, SUSPEND):
                    self._streaming = False
                if n == 0:
                    names = self._finish(w)
                    for idx in names:
                        conn.write(os.fsencode(os.path.basename(idx)) + b"\n")
                    conn.ok()
                    return
                if n == SUSPEND:
                    self.suspended = w
                    conn.ok()
                    return
                frame = conn.read(n)
                oid = frame[:20]
                crc = int.from_bytes(frame[20:24], "big")
                encoded = frame[24:]
                if crc32(encoded) != crc:
                    raise ProtocolError(f"object {oid.hex()}: CRC mismatch")
                if not dumb:
                    hit = repo.index.find(oid)
                    if hit is not None:
                        if hit[0] not in suggested:
                            suggested.add(hit[0])
                            conn.write(b"index " + os.fsencode(hit[0]) + b"\n")
                            conn.flush()
                        continue
                type_num, data = decode_entry(encoded)
                h = sha1(gobj.header(type_num, len(data)))
                h.update(data)
                if h.digest() != oid:
                    raise ProtocolError(f"object {oid.hex()}: id does not match its content")
                w.write_raw(oid, encoded, crc)
        except BaseException:
            # Complete objects are worth keeping: a resumed save skips them.
            if self._streaming:
                self._finish(w)
            raise

    def _frame_length(self) -> int:
        head = self.conn.try_read(4)
        if len(head) < 4:
            raise ConnectionLost("client went away in the middle of receive-objects-v2")
        n = int.from_bytes(head, "big")
        if n not in (0, SUSPEND) and (n <= 24 or n > (1 << 31)):
            raise ProtocolError(f"bad object frame length {n}")
        return n

    def _skip_stream(self) -> None:
        """Read and drop object frames up to the stream's end (its answer is sent)."""
        while True:
            n = self._frame_length()
            if n in (0, SUSPEND):
                self._streaming = False
                return
            self.conn.read(n)

    def _finish(self, w: PackWriter) -> list[str]:
        if w is self.suspended:
            self.suspended = None
        names = w.close()
        if names and self.repo is not None and not self._dumb():
            self.repo.maintain()
        return names

    # -- refs -----------------------------------------------------------------

    def read_ref(self, arg: bytes) -> None:
        oid = self._repo().read_ref(arg.strip())
        self.conn.write(oid.hex().encode() + b"\n" if oid else b"")
        self.conn.ok()

    def update_ref(self, arg: bytes) -> None:
        repo = self._writing()
        name = arg.strip()
        new_hex = self.conn.readline().strip()
        old_hex = self.conn.readline().strip()
        if not name.startswith((b"refs/heads/", b"refs/tags/", b"refs/ketch/")):
            raise Refused(f"{name.decode(errors='replace')}: only branches and tags may be set")
        check_ref_name(name)
        try:
            new = bytes.fromhex(new_hex.decode())
            old = bytes.fromhex(old_hex.decode()) if old_hex and old_hex != ZERO_HEX else None
        except ValueError:
            raise KetchError("update-ref: bad object id") from None
        if len(new) != 20 or new == bytes(20):
            raise Refused("deleting refs over the wire is not allowed")
        from ketch.lifecycle.connect import check_complete, descends

        check_complete(repo, new, old)
        if self.opts.append_only and old is not None and not descends(repo, new, old):
            raise Refused(f"append-only: {name.decode(errors='replace')} may only move forward")
        try:
            repo.update_ref(name, new, old, message=b"ketch server: update-ref")
        except RefConflict as e:
            raise RefConflict(f"conflict: {e}") from None
        self.conn.ok()

    def refs(self, arg: bytes) -> None:
        words = arg.split()
        if len(words) != 2 or any(w not in (b"0", b"1") for w in words):
            raise ProtocolError(f"refs: bad arguments {arg!r}")
        heads, tags = words[0] == b"1", words[1] == b"1"
        patterns = list(self.conn.lines_until_blank())
        for name, oid in sorted(self._repo().iter_refs(b"refs/")):
            if heads or tags:
                if not ((heads and name.startswith(b"refs/heads/"))
                        or (tags and name.startswith(b"refs/tags/"))):
                    continue
            if patterns and not any(_ref_matches(name, p) for p in patterns):
                continue
            self.conn.write(oid.hex().encode() + b" " + name + b"\n")
        self.conn.write(b"\n")
        self.conn.ok()

    def rev_list(self, _: bytes) -> None:
        repo = self._repo()
        if self.conn.readline() != b"\n":
            raise ProtocolError("rev-list: expected an empty count line")
        fmt = self.conn.readline()
        if not fmt:
            raise ConnectionLost("rev-list: connection lost")
        refs = list(self.conn.lines_until_blank())
        args = ["git", "--git-dir", repo.path, "rev-list"]
        if fmt != b"\n":
            args.append(b"--pretty=format:" + fmt[:-1])  # type: ignore[arg-type]
        for r in refs:
            if r.startswith(b"-"):
                raise Refused("rev-list: options are not allowed")
            args.append(r)  # type: ignore[arg-type]
        args.append("--")
        out = subprocess.run(args, stdout=subprocess.PIPE, check=False)
        self.conn.write(out.stdout)
        self.conn.write(b"\n")
        if out.returncode:
            raise KetchError(f"git rev-list returned error {out.returncode}")
        self.conn.ok()

    def par2(self, _: bytes) -> None:
        """Parity for each pack this session writes (a client's `save --par2`)."""
        from ketch.integrity import parity

        if not parity.available():
            raise KetchError(parity.NOT_INSTALLED)
        self._repo().make_parity(parity.generate)
        self.conn.ok()

    # -- objects out ----------------------------------------------------------

    def _lookup(self, spec: bytes) -> bytes | None:
        repo = self._repo()
        if len(spec) == 40:
            # A full id is an object id (as in git cat-file): clients read
            # thousands of them, and trying refs first costs three opens each.
            try:
                return bytes.fromhex(spec.decode())  # cat_batch reads it, or says missing
            except ValueError:
                pass
        try:
            return repo.resolve_ref(spec)
        except KetchError:
            return None

    def cat_batch(self, _: bytes) -> None:
        repo = self._repo()
        specs = list(self.conn.lines_until_blank())
        for spec in specs:
            oid = self._lookup(spec)
            if oid is None:
                self.conn.write(b"missing\n")
                continue
            try:
                t, data = repo.read(oid)
            except ObjectNotFound:
                self.conn.write(b"missing\n")
                continue
            self.conn.write(b"%s %s %d\n" % (oid.hex().encode(), gobj.TYPE_NAMES[t], len(data)))
            self.conn.write(data)
        self.conn.ok()

    def cat_stored(self, arg: bytes) -> None:
        """ketch's own `cat-batch`: entries as stored (remote/stored.py)."""
        ids = read_request(self.conn, arg.strip())
        if self._stored is None:
            self._stored = StoredReader(self._repo())
        self._stored.serve(self.conn, ids)

    def join(self, arg: bytes) -> None:
        oid = self._lookup(arg.strip())
        if oid is None:
            self.conn.write(u32(0))
            raise KetchError(f"no such object or ref: {arg.decode(errors='replace')}")
        from ketch.stream import iter_blob_data

        try:
            for block in iter_blob_data(self._repo(), oid):
                self.conn.write(u32(len(block)))
                self.conn.write(block)
        except KetchError:
            self.conn.write(u32(0))
            raise
        self.conn.write(u32(0))
        self.conn.ok()

    def resolve(self, arg: bytes) -> None:
        from ketch.remote.bupvfs import resolve_reply

        try:
            flags = int(arg.strip() or b"0")
        except ValueError:
            raise ProtocolError(f"resolve: bad flags {arg!r}") from None
        if self._vfs is None:
            from ketch.vfs import VFS

            self._vfs = VFS(self._repo())
        reply = resolve_reply(self._vfs, flags, self.conn.read)
        self.conn.write(reply)
        self.conn.ok()


def _reason(e: KetchError | OSError) -> str:
    if isinstance(e, KetchError):
        return str(e)
    return f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"


def _ref_matches(name: bytes, pattern: bytes) -> bool:
    """git show-ref's rule: the pattern matches whole trailing components."""
    return name == pattern or name.endswith(b"/" + pattern.lstrip(b"/"))


def serve(rfd: int, wfd: int, opts: ServerOptions) -> None:
    Server(Conn(rfd, wfd, peer="client"), opts).run()
