"""One Repository interface: objects and refs, read and written the same way
whether the repository is a local directory, a server over ssh, or an S3 mirror.

Reading is `Repository`; writing is `WritableRepository`, which a read-only
backend (an S3 mirror) is not: a caller that writes asks `repo.writable()`,
which says in one line why not. Writes happen in a session
(`WritableRepository.writer()`): objects go into packs that become visible only
when durable, and refs move afterwards, by compare-and-swap. `ls`, `restore`,
`cat-file` and the VFS use only `Repository`.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from ketch.errors import KetchError, RefNotFound
from ketch.git import objects as gobj
from ketch.git.pack import DEFAULT_LEVEL
from ketch.progress import Progress

if TYPE_CHECKING:
    from ketch.localrepo import LocalRepository

# Where gc puts the packs it is about to delete (see ketch.lifecycle.gc): out of
# sight of every dedup lookup, still readable until gc has rescued from them
# whatever a save that raced it came to need.
RETIRING_DIR = os.path.join("ketch-gc", "doomed")


class ReadOnlyRepository(KetchError):
    """Writing to a repository that only reads was attempted."""


class AppendOnlyRepository(ReadOnlyRepository):
    """The repository takes new saves but refuses to remove any (a backup
    server's append-only key): its server applies retention, not the client."""


class ObjectWriter(Protocol):
    """A write session: objects written here are durable only after `close()`.
    `objects_written` and `bytes_written` (encoded, as stored) count what this
    session added."""

    objects_written: int
    bytes_written: int

    def write(self, type_num: int, data: bytes | memoryview, *,
              metadata: bool = False) -> bytes: ...
    def write_many(self, type_num: int, datas: Sequence[bytes | memoryview], *,
                   metadata: bool = False) -> list[bytes]: ...
    def exists(self, oid: bytes) -> bool: ...
    def close(self) -> list[str]: ...
    def abort(self) -> None: ...


class GcJob(Protocol):
    """A garbage collection, run where the repository is: `run` on a local one;
    a remote one sends `options` (JSON-able) to its server, which builds the same
    job there."""

    options: dict[str, Any]
    @property
    def progress(self) -> Progress | None:
        """What shows the gc's steps (a GcProgress: ketch.lifecycle.gcreport), for
        a backend that runs it in this process on its own terms (a bucket)."""

    def run(self, repo: LocalRepository) -> dict[str, Any]: ...


class FsckJob(Protocol):
    """An integrity check (`ketch fsck`), run where the repository is, as GcJob:
    `run` on a local one; a remote one sends `options` to its server."""

    options: dict[str, Any]

    def run(self, repo: LocalRepository) -> dict[str, Any]: ...


class Repository(ABC):
    """Objects by id, and refs, read: what every backend offers.

    `cache_dir` is a local directory for caches about this repository (the save
    index lives there): the repository itself when it is a local one."""

    cache_dir: str
    # Why `writable()` refuses, for a backend that only reads.
    read_only = "this repository is read-only"
    # Whether `read_many` may run on one thread while `read` runs on another
    # (a restore then reads the next files' blobs while it writes).
    reads_concurrently = False
    # Whether a process forked from this one may go on reading through its
    # copy of this object (a restore's workers): not over a shared connection.
    reads_in_forked_processes = False
    # Whether a read costs no round trip (a local disk): then reading a few
    # objects together with read_many pays, where a remote backend is better
    # told what comes next (prefetch) and left to read ahead.
    reads_are_local = False
    # Whether a walk of many directories pays for reading their trees first, a
    # level at a time (`read_ahead`): where each read is a round trip, a walk of
    # N directories then costs as many rounds as the tree is deep, not N.
    walks_ahead = False
    # Whether read/read_many have checked every object against its id already
    # (a backend that must, the bytes coming from another machine): a
    # restore then does not hash them a second time.
    reads_verified = False
    # After opening with create: whether this made the repository (False: it
    # was there already); None where the backend cannot tell.
    created: bool | None = None
    # Whether read_many is best asked for many more objects at once than a
    # local disk wants (a restore's batches): a backend that plans its reads
    # across a whole batch fetches each stretch of a pack once per batch.
    wide_batches = False

    @abstractmethod
    def read(self, oid: bytes) -> tuple[int, bytes]:
        """(type number, content); raises ObjectNotFound."""

    @abstractmethod
    def has_many(self, oids: Sequence[bytes]) -> list[bool]:
        """Whether each of `oids` is stored, in order."""

    def exists(self, oid: bytes) -> bool:
        return self.has_many([oid])[0]

    def read_many(self, oids: Sequence[bytes]) -> Iterator[tuple[bytes, int, bytes]]:
        """(oid, type, content) for each of `oids`, in whatever order this
        backend reads fastest (a local one: pack order). Raises as `read`
        does, possibly after yielding some; what was not yielded the caller
        can ask `read` for, one by one, to learn which object failed and why.
        The caller checks each content against its id."""
        self.prefetch(oids)
        for oid in oids:
            t, data = self.read(oid)
            yield oid, t, data

    def read_ahead(self, oids: Sequence[bytes]) -> Iterator[tuple[bytes, int, bytes]]:
        """read_many, for objects `read` will be asked for again soon (a walk's
        trees and metadata, read level by level first: `walks_ahead`): a
        backend that caches keeps them."""
        return self.read_many(oids)

    @abstractmethod
    def read_ref(self, name: bytes) -> bytes | None: ...

    @abstractmethod
    def iter_refs(self, prefix: bytes = b"refs/") -> Iterator[tuple[bytes, bytes]]: ...

    def close(self) -> None:  # noqa: B027 - backends without resources need nothing
        pass

    def forked(self) -> None:  # noqa: B027 - nothing shared to drop
        """Called in a process forked from this one (`reads_in_forked_processes`,
        `writes_in_forked_processes`) before it reads or writes: what the
        parent's process owns (connections, threads, locks) is made anew."""

    def prefetch(self, oids: Sequence[bytes]) -> None:  # noqa: B027 - a hint
        """These objects will be read soon: a remote backend fetches them together."""


    def traffic(self) -> tuple[int, int] | None:
        """(bytes sent, bytes received) over the network so far; None for a
        repository that is not reached over a network (`save --json` then
        reports no traffic at all, rather than a misleading zero)."""
        return None

    def pack_sizes(self) -> list[tuple[int, float]]:
        """(bytes, when written: seconds since the epoch, 0 if unknown) of each
        pack in use, for a dashboard's size and growth; empty where the packs
        cannot be listed from here (over ssh)."""
        return []

    def check_integrity(self, job: FsckJob) -> dict[str, Any]:
        """Run `job` where the repository's files are; its report."""
        raise KetchError("this repository cannot be checked from here")

    def writable(self) -> WritableRepository:
        """This repository, to write to; raises ReadOnlyRepository when it only reads."""
        raise ReadOnlyRepository(self.read_only)

    def __enter__(self) -> Repository:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- conveniences built on the five operations ---------------------------

    def read_typed(self, oid: bytes, want: int) -> bytes:
        t, data = self.read(oid)
        if t != want:
            raise KetchError(
                f"object {oid.hex()} is a {gobj.TYPE_NAMES[t].decode()}, "
                f"not a {gobj.TYPE_NAMES[want].decode()}"
            )
        return data

    def resolve_ref(self, spec: bytes) -> bytes:
        """A full ref, a branch or tag name, HEAD, or a (possibly abbreviated) hex id."""
        for name in (spec, b"refs/heads/" + spec, b"refs/tags/" + spec, b"refs/" + spec):
            if name.startswith(b"refs/") or name == b"HEAD":
                oid = self.read_ref(name)
                if oid is not None:
                    return oid
        if 4 <= len(spec) <= 40 and all(c in b"0123456789abcdef" for c in spec.lower()):
            oid = self.expand_hex(spec.lower().decode())
            if oid is not None:
                return oid
        raise RefNotFound(f"unknown ref or object: {spec.decode(errors='replace')}")

    def expand_hex(self, hexid: str) -> bytes | None:
        if len(hexid) == 40:
            oid = bytes.fromhex(hexid)
            return oid if self.exists(oid) else None
        return None


class WritableRepository(Repository):
    """A repository that also takes objects (in write sessions) and moves refs."""

    # Whether a process forked from this one may open a write session of its
    # own through its copy of this object (a save's big-file writer, see
    # ketch.savefork): not over a shared connection.
    writes_in_forked_processes = False

    def writable(self) -> WritableRepository:
        return self

    @abstractmethod
    def writer(
        self,
        *,
        level: int = DEFAULT_LEVEL,
        max_pack_size: int | None = None,
        max_pack_objects: int | None = None,
    ) -> ObjectWriter: ...

    @abstractmethod
    def update_ref(
        self, name: bytes, new: bytes, old: bytes | None, message: bytes = b""
    ) -> None:
        """Move `name` from `old` (None: must not exist) to `new`, or raise RefConflict."""

    def adopt_packs(self, idx_paths: list[str]) -> None:  # noqa: B027 - nothing to learn
        """Packs a forked process wrote into this repository for this process's
        session (`writes_in_forked_processes`): looked up and protected from now
        on as if written here."""

    def maintain(self) -> None:  # noqa: B027 - a backend that keeps itself tidy
        """Housekeeping after a snapshot (bup merges small idx files)."""

    def make_parity(self, generate: Callable[[str], None]) -> None:
        """Protect every pack written from now on with recovery data (`save
        --par2`): a local repository calls `generate(pack_path)` for each pack in
        `maintain`, once the pack is durable and the branch has moved (what
        `generate` raises is the caller's); a server makes its own when asked."""
        raise KetchError("this repository cannot store parity files")

    def writing(self) -> AbstractContextManager[object]:
        """Held by a save from its first existence check until its branch has
        moved: gc waits for it before deleting what the save may have counted on.
        A backend whose server holds it on the save's behalf needs nothing here."""
        return contextlib.nullcontext()

    def collect_garbage(self, job: GcJob) -> dict[str, Any]:
        """Run `job` where the repository is; its report."""
        raise KetchError("this repository cannot be garbage-collected from here")
