"""Options and helpers shared by the command modules."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ketch.errors import UsageError
from ketch.repo import LocalRepository, Repository, default_repo_path

F = TypeVar("F", bound=Callable[..., Any])


def _store_remote(ctx: click.Context, _: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        ctx.meta["ketch.remote"] = value
    return value


def repo_option(f: F) -> F:
    """`-d DIR` or `-r REMOTE` on every command (either may also come before it)."""
    f = click.option(
        "-r", "--remote", metavar="[USER@]HOST:[PATH]", default=None, expose_value=False,
        callback=_store_remote,
        help="repository on a server over ssh: HOST:PATH or ssh://[USER@]HOST[:PORT]/PATH",
    )(f)
    return click.option(
        "-d", "--dir", "repo_dir", metavar="DIR", default=None,
        help="repository (default: $KETCH_DIR, else ~/.ketch)",
    )(f)


def repo_path(ctx: click.Context, repo_dir: str | None) -> str:
    if repo_dir is None and ctx.obj is not None:
        repo_dir = ctx.obj.get("repo_dir")
    return default_repo_path(repo_dir)


def remote_of(ctx: click.Context, repo_dir: str | None) -> str | None:
    remote = ctx.meta.get("ketch.remote")
    if remote is None and ctx.obj is not None:
        remote = ctx.obj.get("remote")
    if remote is not None and (repo_dir is not None or (ctx.obj or {}).get("repo_dir")):
        raise UsageError("give either -d DIR or -r REMOTE, not both")
    return remote  # type: ignore[no-any-return]


def open_repo(ctx: click.Context, repo_dir: str | None, *, create: bool = False) -> Repository:
    remote = remote_of(ctx, repo_dir)
    repo: Repository
    if remote is not None and remote.startswith("s3://"):
        from ketch.remote.location import open_location

        repo = open_location(remote, create=create)
    elif remote is not None:
        from ketch.remote.client import RemoteRepository
        from ketch.remote.spec import parse_remote

        repo = RemoteRepository(parse_remote(remote), create=create)
    else:
        repo = LocalRepository(repo_path(ctx, repo_dir))
    ctx.call_on_close(repo.close)
    return repo


def out() -> Any:
    return sys.stdout.buffer


def show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("KETCH_QUIET")


class TermProgress:
    """Bytes, rate and ETA on stderr, redrawn at most a few times a second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.total: int | None = None
        self.bytes = 0
        self.files = 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self.warnings: list[str] = []

    def start(self, total_bytes: int | None, total_files: int | None = None) -> None:
        self.total = total_bytes

    def advance(self, nbytes: int = 0, nfiles: int = 0) -> None:
        self.bytes += nbytes
        self.files += nfiles
        now = time.monotonic()
        if now - self._last >= 0.2:
            self._last = now
            self._draw(now)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        click.echo(f"\r\x1b[K{message}", err=True)

    def _draw(self, now: float) -> None:
        dt = max(now - self.t0, 1e-6)
        rate = self.bytes / dt
        files = f"{self.files:,} files, " if self.files else ""
        text = f"{self.label}: {files}{self.bytes / 1e6:,.1f} MB, {rate / 1e6:,.1f} MB/s"
        if self.total:
            pct = 100.0 * self.bytes / self.total
            eta = (self.total - self.bytes) / rate if rate > 0 else 0
            text += f", {pct:.1f}%, ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        click.echo(f"\r\x1b[K{text}", err=True, nl=False)

    def finish(self) -> None:
        self._draw(time.monotonic())
        click.echo("", err=True)
