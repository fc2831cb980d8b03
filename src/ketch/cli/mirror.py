from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ketch.cli.termprogress import TermProgress, show_progress
from ketch.errors import EXIT_WARNINGS, UsageError
from ketch.offsite.store import ObjectStore
from ketch.progress import NullProgress, Progress

F = TypeVar("F", bound=Callable[..., Any])


def _store_options(f: F) -> F:
    f = click.option("--endpoint-url", metavar="URL", default=None,
                     help="S3 endpoint (default: $KETCH_S3_ENDPOINT, $AWS_ENDPOINT_URL, AWS)")(f)
    f = click.option("--encrypt-key", metavar="FILE", default=None,
                     help="encrypt/decrypt with this key (default: $KETCH_ENCRYPT_KEY)")(f)
    return click.option("--json", "as_json", is_flag=True, help="print the report as JSON")(f)


def _store(url: str, endpoint_url: str | None, encrypt_key: str | None) -> ObjectStore:
    from ketch.remote.location import open_store

    if not url.startswith("s3://"):
        raise UsageError(f"{url}: the mirror must be an s3://BUCKET[/PREFIX] URL")
    # Given before the command name (`ketch --endpoint-url URL mirror ...`).
    meta = click.get_current_context().meta
    endpoint_url = endpoint_url or meta.get("ketch.endpoint_url")
    encrypt_key = encrypt_key or meta.get("ketch.encrypt_key")
    return open_store(url.rstrip("/"), endpoint_url=endpoint_url, encrypt_key=encrypt_key)


def _progress(label: str, as_json: bool) -> Progress:
    return TermProgress(label) if show_progress() and not as_json else NullProgress()


def _report(report: Any, as_json: bool) -> int:
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.text())
    return int(report.exit_code)


@click.group("mirror")
def command() -> None:
    """Offsite copies in S3: push repositories, verify, pull, and read them in place.

    \b
    ketch mirror push REPO... s3://bucket/prefix     (or --all DIR)
    ketch ls -r s3://bucket/prefix/REPO              (also cat-file, restore)
    ketch mirror verify s3://bucket/prefix --read-data=5
    ketch mirror pull s3://bucket/prefix DIR
    """


@command.command("push")
@click.argument("args", nargs=-1, required=True, metavar="(REPO... | --all DIR) S3URL")
@click.option("--all", "all_dir", metavar="DIR", default=None,
              help="every repository directly under DIR")
@click.option("-n", "--dry-run", is_flag=True, help="show what would be uploaded and deleted")
@click.option("--storage-class", metavar="CLASS", default=None,
              help="S3 storage class for packs, e.g. STANDARD_IA or GLACIER_IR "
                   "(manifests and idx files stay STANDARD)")
@_store_options
def push_cmd(args: tuple[str, ...], all_dir: str | None, dry_run: bool,
             storage_class: str | None, endpoint_url: str | None, encrypt_key: str | None,
             as_json: bool) -> int:
    """Upload what is new in the repositories: packs, idx files, then a manifest.

    Each repository keeps a record of its push (refs/ketch/mirror), which the
    next push uploads: the backup server's dashboard reads it there."""
    from ketch.offsite.push import find_repositories, push

    *repos, url = args
    if all_dir is not None:
        repos += find_repositories(all_dir)
    if not repos:
        raise UsageError("name the repositories to push, or --all DIR")
    store = _store(url, endpoint_url, encrypt_key)
    report = push(repos, store, dry_run=dry_run, storage_class=storage_class,
                  progress=_progress("Uploading", as_json), record_as=url)
    return _report(report, as_json)


@command.command("pull")
@click.argument("url", metavar="S3URL")
@click.argument("dest", metavar="DIR", type=click.Path(file_okay=False))
@click.argument("repos", nargs=-1, metavar="[REPO...]")
@_store_options
def pull_cmd(url: str, dest: str, repos: tuple[str, ...], endpoint_url: str | None,
             encrypt_key: str | None, as_json: bool) -> int:
    """Rebuild the mirror's repositories (or only REPOs) as DIR/REPO."""
    from ketch.offsite.pull import pull

    store = _store(url, endpoint_url, encrypt_key)
    report = pull(store, list(repos) or None, dest, progress=_progress("Downloading", as_json))
    return _report(report, as_json)


class _OptionalValue(click.Command):
    """`--read-data` alone means 100; a value must be attached (`--read-data=5`), so
    that the bare option never swallows the URL after it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        args = [("--read-data=100" if a == "--read-data" and i < end else a)
                for i, a in enumerate(args)]
        return super().parse_args(ctx, args)


@command.command("verify", cls=_OptionalValue)
@click.argument("url", metavar="S3URL")
@click.argument("repos", nargs=-1, metavar="[REPO...]")
@click.option("--read-data", "percent", type=float, default=0.0, metavar="[=PERCENT]",
              help="also download PERCENT of the packs (alone: all) and check every object")
@click.option("--root", metavar="DIR", default=None,
              help="the local repositories (DIR/NAME, a backup server's root) each keep the "
                   "result on refs/ketch/mirror, for ketch web")
@_store_options
def verify_cmd(url: str, repos: tuple[str, ...], percent: float, root: str | None,
               endpoint_url: str | None, encrypt_key: str | None, as_json: bool) -> int:
    """Check the mirror against its manifests (exit 2: damaged, 1: extra files)."""
    from ketch.offsite.mirrorlog import record_verify
    from ketch.offsite.verify import verify

    if root is not None and not os.path.isdir(root):
        raise UsageError(f"--root {root}: no such directory")
    store = _store(url, endpoint_url, encrypt_key)
    report = verify(store, list(repos) or None, read_data_percent=percent,
                    progress=_progress("Reading", as_json))
    warnings = record_verify(report.repos, root, url, percent) if root is not None else []
    for w in warnings:
        click.echo(f"ketch: warning: {w}", err=True)
    return max(_report(report, as_json), EXIT_WARNINGS if warnings else 0)


@command.command("keygen")
@click.argument("path", metavar="FILE")
def keygen_cmd(path: str) -> None:
    """Make a new encryption key in FILE (mode 0600). Keep a copy away from the
    bucket: without it the mirror cannot be read."""
    from ketch.offsite.keyfile import keygen, save_key

    save_key(path, keygen())
    click.echo(f"wrote a new key to {path}; store a copy somewhere safe, apart from the bucket",
               err=True)
