"""`ketch help [TOPIC|COMMAND]`: the reference pages of ketch.cli.helptopics, or a
command's --help."""

from __future__ import annotations

import difflib

import click

from ketch.errors import UsageError


@click.command("help", short_help="Help topics (ketch help config: the config file's keys).")
@click.argument("topic", required=False)
@click.pass_context
def command(ctx: click.Context, topic: str | None) -> None:
    """Show a help topic (e.g. `ketch help config`), or a command's help; alone, list
    the topics."""
    from ketch.cli.helptopics import TOPICS

    group = ctx.parent.command if ctx.parent is not None else None
    if topic is None:
        click.echo("Help topics (ketch help TOPIC):")
        for name, (summary, _) in TOPICS.items():
            click.echo(f"  {name:<12} {summary}")
        click.echo("\nCommands (ketch help COMMAND, or ketch COMMAND --help): see ketch --help")
        return
    if topic in TOPICS:
        click.echo(TOPICS[topic][1](), nl=False)
        return
    assert ctx.parent is not None and isinstance(group, click.Group)
    cmd = group.get_command(ctx.parent, topic)
    if cmd is not None:
        with click.Context(cmd, info_name=topic, parent=ctx.parent) as sub:
            click.echo(cmd.get_help(sub))
        return
    names = [*TOPICS, *group.list_commands(ctx.parent)]
    close = difflib.get_close_matches(topic, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UsageError(f"no help topic or command '{topic}'{hint}; 'ketch help' lists the topics")
