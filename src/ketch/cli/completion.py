"""`ketch completion SHELL`: the script that makes SHELL complete ketch's commands,
options and arguments (click's completion, answered by `ketch` itself through
$_KETCH_COMPLETE)."""

from __future__ import annotations

import click

SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def command(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL.

    \b
    bash: ketch completion bash > /etc/bash_completion.d/ketch
          (or: eval "$(ketch completion bash)" in ~/.bashrc)
    zsh:  eval "$(ketch completion zsh)" in ~/.zshrc
    fish: ketch completion fish > ~/.config/fish/completions/ketch.fish
    """
    from click.shell_completion import get_completion_class

    root = ctx.find_root().command
    cls = get_completion_class(shell)
    assert cls is not None  # click knows all of SHELLS
    click.echo(cls(root, {}, "ketch", "_KETCH_COMPLETE").source())
