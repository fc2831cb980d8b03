"""Options and helpers shared by the command modules."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ketch.errors import NotARepository, UsageError

if TYPE_CHECKING:  # main imports this module: it must stay light
    from ketch.remote.location import Kind
    from ketch.repo import Repository

F = TypeVar("F", bound=Callable[..., Any])


def store_meta(key: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def store(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
        # ctx.meta is shared by the group's context and the command's, so an
        # option given before the command name and one given after meet here.
        if value is not None:
            ctx.meta[key] = value
    return store


REMOTE_HELP = ("repository on a backup server over ssh (also ssh://[USER@]HOST[:PORT]/PATH)"
               " or in a bucket (its own, or a mirror)")
REMOTE_METAVAR = "[USER@]HOST:[PATH], ssh://..., or s3://BUCKET/PREFIX/REPO"
DIR_HELP = "repository directory (default: $KETCH_DIR, else the config's repository, else ~/.ketch)"


def s3_options(f: F) -> F:
    """`--endpoint-url` and `--encrypt-key` for `-r s3://...` (before or after the command)."""
    f = click.option(
        "--endpoint-url", metavar="URL", default=None, expose_value=False,
        callback=store_meta("ketch.endpoint_url"),
        help="S3 endpoint for -r s3://... (default: $KETCH_S3_ENDPOINT, $AWS_ENDPOINT_URL, AWS)",
    )(f)
    return click.option(
        "--encrypt-key", metavar="FILE", default=None, expose_value=False,
        callback=store_meta("ketch.encrypt_key"),
        help="key of an encrypted repository in a bucket (default: $KETCH_ENCRYPT_KEY)",
    )(f)


def repo_option(f: F) -> F:
    """`-d DIR` or `-r REMOTE` on every command (either may also come before it)."""
    f = s3_options(f)
    f = click.option(
        "-r", "--remote", metavar=REMOTE_METAVAR, default=None, expose_value=False,
        callback=store_meta("ketch.remote"), help=REMOTE_HELP,
    )(f)
    return click.option("-d", "--dir", "repo_dir", metavar="DIR", default=None,
                        help=DIR_HELP)(f)


@dataclass(frozen=True)
class Where:
    """Which repository a command uses, and what chose it (for messages)."""

    location: str
    kind: Kind  # "local" for -d, $KETCH_DIR and ~/.ketch; "remote" for -r
    source: str  # "-d", "-r", "$KETCH_DIR", the config file's path, or "" (the default)
    config_path: str  # the config file looked for


def _config_repository(path: str) -> str | None:
    """The `repository` of the machine's config, or None when there is no config."""
    if not os.path.exists(path):
        return None
    from ketch.jobs.config import ConfigError, load_config

    try:
        return load_config(path).repository
    except ConfigError as e:
        raise UsageError(f"no -d or -r given, so the repository is the one in {path}, which "
                         f"has errors (give -d DIR or -r REMOTE to go on without it):\n{e}"
                         ) from None


def where(ctx: click.Context, repo_dir: str | None) -> Where:
    """-d, else -r, else $KETCH_DIR, else the machine's config, else ~/.ketch."""
    from ketch.jobs.model import default_config_path

    config_path = default_config_path()
    group = ctx.obj or {}
    repo_dir = repo_dir if repo_dir is not None else group.get("repo_dir")
    remote = ctx.meta.get("ketch.remote")
    if remote is not None and repo_dir is not None:
        raise UsageError("give either -d DIR or -r REMOTE, not both")
    if repo_dir is not None:
        return Where(repo_dir, "local", "-d", config_path)
    if remote is not None:
        return Where(remote, "remote", "-r", config_path)
    env = os.environ.get("KETCH_DIR")
    if env:
        return Where(env, "local", "$KETCH_DIR", config_path)
    configured = _config_repository(config_path)
    if configured:
        return Where(configured, "auto", config_path, config_path)
    from ketch.localrepo import default_repo_path

    return Where(default_repo_path(None), "local", "", config_path)


def _not_a_repository(w: Where, e: NotARepository) -> NotARepository:
    if w.source in ("-d", "-r"):
        return e  # named on the command line: the plain message says it all
    path = w.location
    if w.source == "$KETCH_DIR":
        why = "named by $KETCH_DIR; create it with 'ketch init', or give -d DIR or -r REMOTE"
    elif w.source:
        why = f"the repository of {w.source}; create it with 'ketch init'"
    else:
        why = (f"the default: no -d or -r given, $KETCH_DIR unset, no {w.config_path}; "
               "give -d DIR or -r REMOTE, or create one with 'ketch config init' or 'ketch init'")
    return NotARepository(f"{path}: not a repository ({why})")


def open_repo(ctx: click.Context, repo_dir: str | None, *, create: bool = False) -> Repository:
    from ketch.remote.location import open_location

    w = where(ctx, repo_dir)
    if w.source == w.config_path and sys.stderr.isatty():
        # Only on a terminal: `ketch cat-file ... | mysql` in a script stays quiet.
        click.echo(f"ketch: using repository {w.location} from {w.source}", err=True)
    try:
        repo = open_location(w.location, kind=w.kind, create=create,
                             endpoint_url=ctx.meta.get("ketch.endpoint_url"),
                             encrypt_key=ctx.meta.get("ketch.encrypt_key"))
    except NotARepository as e:
        raise _not_a_repository(w, e) from None
    ctx.call_on_close(repo.close)
    return repo


def out() -> Any:
    return sys.stdout.buffer
