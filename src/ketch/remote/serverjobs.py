"""The server's long jobs, `gc` and `fsck`: the command, then one line of JSON
options; keepalive lines while the job runs (a firewall that drops idle
connections does not cut it off), then one line of JSON report and `ok`.

A mixin of `Server` (remote/server.py), which owns the session state used here.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ketch.errors import KetchError
from ketch.remote.protocol import GC_KEEPALIVE_LINE, Conn

if TYPE_CHECKING:
    from ketch.localrepo import LocalRepository
    from ketch.remote.server import ServerOptions
    from ketch.vfs import VFS


class Refused(KetchError):
    """A confined client asked for something its key does not allow."""


class ServerJobs:
    conn: Conn
    opts: ServerOptions
    suspended: object
    _vfs: VFS | None
    _lease: contextlib.ExitStack
    _leased: bool

    GC_KEEPALIVE = 30.0  # seconds between keepalive lines while a job runs

    def _repo(self) -> LocalRepository:
        raise NotImplementedError

    def _job_options(self, name: str) -> dict[str, Any]:
        line = self.conn.readline()
        try:
            options = json.loads(line)
        except (ValueError, RecursionError):
            options = None
        if not isinstance(options, dict):  # the line is read: the session stays in step
            raise KetchError(f"{name}: expected one line of JSON options (an object)")
        if self.suspended is not None:
            raise KetchError(f"cannot {name} during receive-objects-v2")
        return options

    def gc(self, _: bytes) -> None:
        """`gc` + one line of JSON options -> keepalive lines, one line of JSON report, ok."""
        options = self._job_options("gc")
        if self.opts.append_only:
            raise Refused("append-only: gc is the server's job")
        from ketch.lifecycle.gc import GcRun

        gc_job = GcRun.from_options(options)
        repo = self._repo()
        self._vfs = None
        # The session's lease stands for its client's saves, which are over when
        # it asks for gc (and which re-read the idx files afterwards): held, gc
        # would wait for itself.
        self._lease.close()
        self._leased = False
        self._run_job("gc", lambda: repo.collect_garbage(gc_job))

    def fsck(self, _: bytes) -> None:
        """`fsck` + one line of JSON options -> keepalive lines, one line of JSON
        report, ok. The packs are read here: no object crosses the connection."""
        options = self._job_options("fsck")
        from ketch.integrity.fsck import FsckRun

        job = FsckRun.from_options(options)
        if job.writes and self.opts.append_only:
            raise Refused("append-only: fsck -g and --repair write to the repository; "
                             "this key may only check it")
        repo = self._repo()
        self._run_job("fsck", lambda: repo.check_integrity(job))

    def _run_job(self, name: str, work: Callable[[], dict[str, Any]]) -> None:
        outcome: list[dict[str, Any]] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                outcome.append(work())
            except BaseException as e:  # noqa: B036 - handed to the serving thread
                failure.append(e)

        # Not a daemon: a client that goes away does not cut a job short.
        worker = threading.Thread(target=run, name=f"ketch-server-{name}")
        worker.start()
        while worker.is_alive():
            worker.join(self.GC_KEEPALIVE)
            if worker.is_alive():
                self.conn.write(GC_KEEPALIVE_LINE)
                self.conn.flush()
        if failure:
            raise failure[0]
        self.conn.write(json.dumps(outcome[0], sort_keys=True, default=str).encode() + b"\n")
        self.conn.ok()
