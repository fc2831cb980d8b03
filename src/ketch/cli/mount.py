from __future__ import annotations

import os

import click

from ketch.cli.common import open_repo, repo_option
from ketch.errors import EXIT_FAILED, KetchError, UsageError


def _check_mountpoint(path: str) -> None:
    if not os.path.isdir(path):
        raise UsageError(f"{path}: no such directory (the mount point must exist)")
    if os.path.ismount(path):
        raise UsageError(f"{path}: something is mounted there already (fusermount3 -u {path})")


def _serve(ctx: click.Context, repo_dir: str | None, mountpoint: str, allow_other: bool,
           ready: int | None) -> None:
    """Open the repository and serve it; `ready` (a pipe) hears "ok" once the
    kernel has the mount, or the error that stopped it."""
    from ketch.mount import mount
    from ketch.vfs import VFS

    def say(text: str) -> None:
        nonlocal ready
        if ready is not None:
            os.write(ready, text.encode() + b"\n")
            os.close(ready)
            ready = None
        elif text == "ok":  # in the foreground: said once the kernel has the mount
            click.echo(f"ketch mount: serving at {mountpoint} (Ctrl-C or fusermount3 -u "
                       f"{mountpoint} unmounts)", err=True)

    try:
        repo = open_repo(ctx, repo_dir)
    except KetchError as e:
        say(f"error: {e}")
        raise
    with repo:
        try:
            mount(VFS(repo), mountpoint, allow_other=allow_other, on_ready=lambda: say("ok"),
                  name=f"ketch:{os.path.basename(os.path.abspath(mountpoint))}")
        except KetchError as e:
            say(f"error: {e}")
            raise
        traffic = repo.traffic()
    if traffic is not None:
        click.echo(f"ketch mount: unmounted {mountpoint}; {traffic[1] / 1e6:,.1f} MB received",
                   err=True)


@click.command("mount")
@repo_option
@click.option("--daemon", is_flag=True,
              help="return once mounted and serve in the background (unmount: fusermount3 -u)")
@click.option("--allow-other", is_flag=True,
              help="let other users in too (needs user_allow_other in /etc/fuse.conf unless root)")
@click.argument("mountpoint")
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None, daemon: bool, allow_other: bool,
            mountpoint: str) -> int:
    """Mount the repository read-only at MOUNTPOINT: the NAME/DATE/path tree of
    `ls`, with each file's mode, owner, size, times and symlink target.

    Runs in the foreground until Ctrl-C or `fusermount3 -u MOUNTPOINT`; with
    --daemon it returns once the mount is there. Works with -d DIR, -r
    HOST:PATH (ssh) and -r s3://BUCKET/PREFIX/REPO; a read at an offset fetches
    only the chunks under it.
    """
    _check_mountpoint(mountpoint)
    if not daemon:
        _serve(ctx, repo_dir, mountpoint, allow_other, None)
        return 0
    # Forked before the repository is opened: an ssh connection or an S3
    # client made in the parent would not survive into the child.
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        # Nothing of the caller's is held open: a script that reads this
        # command's output would otherwise wait for the mount to end.
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        code = 0
        try:
            _serve(ctx, repo_dir, mountpoint, allow_other, wfd)
        except BaseException:  # noqa: BLE001 - said to the parent through the pipe
            code = EXIT_FAILED
        os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        answer = r.readline().decode(errors="replace").strip()
    if answer != "ok":
        # The child said why, or died before it could: either way, no mount.
        raise KetchError(answer.removeprefix("error: ") or "the mount did not start")
    click.echo(f"ketch mount: serving at {mountpoint} in the background (pid {pid}); "
               f"fusermount3 -u {mountpoint} unmounts", err=True)
    return 0
