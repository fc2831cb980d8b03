"""The `ketch` command group: commands load only when they run, and --help and
completion list them from cli/summaries.py without loading them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import click

from ketch.cli.summaries import SUMMARIES, summary

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

class ClosedPipe(Exception):
    """stdout's reader went away. Not an OSError: click's main turns EPIPE into
    `sys.exit(1)` on its own, even in non-standalone mode."""


# Command name -> module in ketch.cli. Modules load only when their command runs,
# so `ketch save` does not pay for importing restore, the VFS and the rest.
COMMANDS = {
    "init": "init", "index": "index", "save": "save", "ls": "ls", "restore": "restore",
    "cat-file": "cat_file", "split": "split", "join": "join", "server": "server", "run": "run",
    "mirror": "mirror", "prune": "prune", "gc": "gc", "fsck": "fsck", "drill": "drill",
    "schedule": "schedule", "web": "web", "mount": "mount",
    "runbook": "runbook",
    "config": "config",
    "completion": "completion",
    "help": "help",
}

class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, from SUMMARIES: click's own would import every command
        (for its help), numpy and the repository code with them."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name not in SUMMARIES:  # a command without a summary: ask it
                cmd = self.get_command(ctx, name)
                if cmd is None or cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(limit)))
            else:
                rows.append((name, summary(name, limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """click's completion of command names, from SUMMARIES (a Tab would
        otherwise import every command)."""
        names = [n for n in self.list_commands(ctx) if n.startswith(incomplete)]
        if any(n not in SUMMARIES for n in names):
            return super().shell_complete(ctx, incomplete)
        from click.shell_completion import CompletionItem

        items = [CompletionItem(n, help=summary(n)) for n in names]
        # The group's own options: click.Command's completion, not click.Group's.
        return items + super(click.Group, self).shell_complete(ctx, incomplete)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        cmd = importlib.import_module(f"ketch.cli.{module}").command
        assert isinstance(cmd, click.Command)
        return cmd

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise ClosedPipe() from e

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as e:
            # click suggests from the registered commands, and ours load lazily.
            raise click.exceptions.NoSuchCommand(
                e.command_name, possibilities=self.list_commands(ctx), ctx=ctx) from None
