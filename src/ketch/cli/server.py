from __future__ import annotations

import os
import sys

import click

from ketch.remote.server import ServerOptions, serve
from ketch.remote.setup import setup_client


@click.group("server", invoke_without_command=True)
@click.option("--restrict-to", metavar="DIR", default=None,
              help="serve only the repository DIR (for an authorized_keys forced command)")
@click.option("--append-only", is_flag=True, help="refuse to delete or rewind branches")
@click.option("-d", "--dir", "repo_dir", metavar="DIR", default=None,
              help="repository used when the client names none")
@click.pass_context
def command(ctx: click.Context, restrict_to: str | None, append_only: bool,
            repo_dir: str | None) -> None:
    """Serve a repository on stdin/stdout (started by ssh; speaks bup's protocol)."""
    if ctx.invoked_subcommand is not None:
        return
    if repo_dir is None and ctx.obj:
        repo_dir = ctx.obj.get("repo_dir")
    if restrict_to is not None and not os.path.isdir(restrict_to):
        raise click.UsageError(f"--restrict-to {restrict_to}: no such directory")
    # The protocol owns stdout: anything else printed there would corrupt it.
    wfd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.fileno(), wfd, ServerOptions(restrict_to=restrict_to, append_only=append_only,
                                                  default_dir=repo_dir))


@command.command("setup-client")
@click.option("--root", metavar="DIR", default=os.path.join(os.path.expanduser("~"), "ketch"),
              show_default=True, help="where the machines' repositories live")
@click.option("--allow-rewind", is_flag=True,
              help="let this key also delete and rewind branches (not append-only)")
@click.option("--authorized-keys", metavar="FILE", default=None,
              help="also append the line to FILE (e.g. ~backup/.ssh/authorized_keys), "
                   "unless it is there already")
@click.option("--user", metavar="NAME", default=None,
              help="the user the machine logs in as, who gets the repository "
                   "[default: the owner of --authorized-keys, else you unless root]")
@click.option("--command", "command_path", metavar="PATH", default=None,
              help="the ketch executable the forced command runs [default: this ketch]")
@click.argument("name")
@click.argument("pubkey")
def setup(root: str, allow_rewind: bool, authorized_keys: str | None, user: str | None,
          command_path: str | None, name: str, pubkey: str) -> None:
    """Create the repository for machine NAME and print its authorized_keys line.

    PUBKEY is the machine's public key: a .pub file or the key text."""
    res = setup_client(root, name, pubkey, append_only=not allow_rewind,
                       command=[os.path.abspath(command_path)] if command_path else None,
                       user=user, authorized_keys=authorized_keys)
    if res.already is not None:
        click.echo(f"{name} is already set up: line {res.already} of {authorized_keys} "
                   f"has this key for {res.repo_path}", err=True)
    else:
        click.echo(f"{'Created' if res.created else 'Using existing'} repository "
                   f"{res.repo_path} (owner {res.user})", err=True)
        if authorized_keys:
            click.echo(f"Added the key to {authorized_keys}", err=True)
    click.echo(res.authorized_keys_line)
