"""`ketch` entry point: the only place that catches errors broadly and maps them
to one-line messages and the documented exit codes (0 ok, 1 warnings, 2 failed)."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import sys
from types import FrameType

import click

from ketch import __version__
from ketch.cli.common import DIR_HELP, REMOTE_HELP, REMOTE_METAVAR, s3_options, store_meta
from ketch.cli.group import ClosedPipe, LazyGroup
from ketch.errors import EXIT_FAILED, KetchError


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-d", "--dir", "repo_dir", metavar="DIR", default=None, help=DIR_HELP)
@click.option("-r", "--remote", metavar=REMOTE_METAVAR, default=None, expose_value=False,
              callback=store_meta("ketch.remote"), help=REMOTE_HELP)
@s3_options
@click.version_option(__version__, prog_name="ketch")
@click.pass_context
def cli(ctx: click.Context, repo_dir: str | None) -> None:
    """ketch: deduplicating backups in bup-compatible git repositories.

    `ketch help` lists more help topics (e.g. `ketch help config`).
    """
    ctx.obj = {"repo_dir": repo_dir}


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    # Some errors list several problems (a config's mistakes): one line each.
    for line in message.splitlines() or [""]:
        click.echo(f"ketch: error: {line}", err=True)
    return code


def _tune_malloc() -> None:
    """glibc raises its mmap threshold after big frees, so the 8 MiB read buffers
    end up in heap arenas that never shrink (one per thread): a fixed threshold
    and two arenas keep peak RSS ~30 MB lower on a big save."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _quiet_stdout() -> int:
    """Point stdout at /dev/null, so that flushing what is left of it at exit (the
    interpreter does) cannot fail a second time; the exit status is then 0."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


def _terminated(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (kill, systemd stopping a job) ends a command as Ctrl-C does:
    # cleanup runs (a remote save keeps what the server received), one line, exit 2.
    raise KeyboardInterrupt


def _interrupted() -> int:
    # A second signal while the interpreter winds down would end it by that signal
    # (exit -2) instead of our exit 2: the user has been heard once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return _fail("interrupted")


def main(argv: list[str] | None = None) -> int:
    _tune_malloc()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        # From here a Ctrl-C is a KeyboardInterrupt, answered below (before
        # here: cli.entry's early handler, while the commands were imported).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        rv = cli.main(args=argv, prog_name="ketch", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        sys.stdout.flush()  # here, where a closed pipe is still ours to catch
    except click.exceptions.Exit as e:
        code = e.exit_code
    except ClosedPipe:
        code = _quiet_stdout()
    except click.exceptions.Abort as e:
        # click turns Ctrl-C into Abort; say what happened.
        code = _interrupted() if isinstance(e.__cause__, KeyboardInterrupt) else _fail("aborted")
    except click.ClickException as e:
        code = _fail(e.format_message(), EXIT_FAILED)
    except KetchError as e:
        code = _fail(str(e), e.exit_code)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); that is not our failure.
        code = _quiet_stdout()
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        code = _fail(f"{where}{e.strerror or errno.errorcode.get(e.errno or 0, str(e))}")
    except KeyboardInterrupt:
        code = _interrupted()
    except Exception as e:  # noqa: BLE001 - last resort: never show a traceback
        code = _fail(f"internal error: {type(e).__name__}: {e}")
    sys.exit(code)
