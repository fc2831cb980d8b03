from __future__ import annotations

import socket
import sys
import threading

import click

from ketch.cli.common import repo_option
from ketch.errors import UsageError


def _listen(spec: str) -> socket.socket:
    host, sep, port_text = spec.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--listen {spec}: give HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port_text)))
    except OSError as e:
        sock.close()
        raise UsageError(f"--listen {spec}: {e.strerror}") from None
    sock.listen(128)
    return sock


@click.command("web")
@click.option("--root", metavar="DIR", default=None,
              help="serve every repository under DIR (a backup server's root; one per machine)")
@repo_option
@click.option("--listen", "listen", metavar="HOST:PORT", default="127.0.0.1:8080",
              show_default=True, help="where to serve; 0.0.0.0:PORT for every address")
@click.option("--token-file", metavar="FILE", default=None,
              help="every request needs the token in FILE (mode 600): Authorization: Bearer, "
                   "or the login form")
@click.pass_context
def command(ctx: click.Context, root: str | None, repo_dir: str | None, listen: str,
            token_file: str | None) -> None:
    """Serve a read-only web dashboard of the backups: every machine's last saves,
    runs, mirror pushes, drills and fsck; browse and download files.

    What is served: --root DIR (every repository under DIR), -d DIR (one
    repository) or -r s3://BUCKET/PREFIX (every repository of a mirror). The
    addresses (/, /m/MACHINE, /api/..., /metrics) are listed in the README.
    """
    import uvicorn

    from ketch.web.app import build_app
    from ketch.web.auth import read_token
    from ketch.web.dashboard import Dashboard
    from ketch.web.source import open_source

    remote = ctx.meta.get("ketch.remote")
    source = open_source(root, repo_dir, remote, ctx.meta.get("ketch.endpoint_url"),
                         ctx.meta.get("ketch.encrypt_key"))
    token = read_token(token_file) if token_file else None
    sock = _listen(listen)
    host, port = sock.getsockname()[:2]
    if token is None and host not in ("127.0.0.1", "::1", "localhost"):
        click.echo(f"ketch web: warning: serving {host} without --token-file: anyone who "
                   "reaches it reads every machine's files", err=True)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"ketch web: serving {source.description} on http://{shown}:{port}/ "
               f"({len(source.names())} machines; Ctrl-C stops)", err=True)
    sys.stderr.flush()
    dash = Dashboard(source, token)
    # Every summary read once while uvicorn starts: the first visitor then
    # waits for the refs and pack listings only (200 machines: 1.3 s -> 0.2 s).
    threading.Thread(target=dash.warm, name="warm", daemon=True).start()
    app = build_app(dash)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            proxy_headers=True, forwarded_allow_ips="127.0.0.1")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn stops cleanly on Ctrl-C, then raises it again: for a server
        # that is the way to stop, not a failure.
        click.echo("ketch web: stopped", err=True)
    finally:
        source.close()
