"""`ketch runbook`: this machine's disaster procedures, filled in (ketch.jobs.runbook)."""

from __future__ import annotations

import json
import socket

import click

from ketch.errors import KetchError, UsageError


@click.command("runbook")
@click.option("-c", "--config", "config_path", metavar="FILE", default=None,
              help="the machine's config (default: $KETCH_CONFIG, else /etc/ketch/ketch.toml)")
@click.option("--machine", metavar="NAME", default=None,
              help="its name on the backup server (default: this host's name)")
@click.option("--mirror", metavar="S3URL", default=None,
              help="the backup server's mirror, s3://BUCKET/PREFIX, for the server procedure")
@click.option("--mirror-key", metavar="FILE", default=None,
              help="where the mirror's key will be (its copy away from the server)")
@click.option("--server-root", metavar="DIR", default="/srv/ketch", show_default=True,
              help="where the backup server keeps the repositories")
@click.option("--only", type=click.Choice(["files", "database", "machine", "server"]),
              multiple=True, help="print only this procedure (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print the runbook as JSON")
def command(config_path: str | None, machine: str | None, mirror: str | None,
            mirror_key: str | None, server_root: str, only: tuple[str, ...], as_json: bool) -> None:
    """Print this machine's disaster procedures as the exact commands to run:
    files lost, a database damaged, the machine lost, the backup server lost.

    Filled in from the config (repository, sets, dumps); the dumps' file names
    come from the repository when it can be read. Print it now and keep it
    away from the machine: docs/disaster-recovery.md explains each procedure.
    """
    from ketch.jobs.config import default_config_path, load_config
    from ketch.jobs.runbook import RepositoryFacts, build, read_facts
    from ketch.remote.location import open_location

    if mirror is not None and not mirror.startswith("s3://"):
        raise UsageError(f"--mirror {mirror}: give the mirror as s3://BUCKET/PREFIX")
    cfg = load_config(config_path or default_config_path())
    facts: RepositoryFacts | None = None
    try:
        with open_location(cfg.repository, endpoint_url=cfg.s3_endpoint,
                           encrypt_key=cfg.encrypt_key) as repo:
            facts = read_facts(repo, cfg)
    except KetchError as e:
        why = " ".join(str(e).split())  # one line, whatever the transport said
        click.echo(f"ketch: note: repository not read ({why}); dump files are listed "
                   "generically", err=True)
    book = build(cfg, machine or socket.gethostname().split(".")[0], mirror=mirror,
                 mirror_key=mirror_key, server_root=server_root, facts=facts)
    if only:
        book.keep(only)
    click.echo(json.dumps(book.as_dict(), indent=2) if as_json else book.text(), nl=False
               if not as_json else True)
