"""Start-up (issue 13, item 6): the entry point, `ketch --help`, `--version` and
the completion of command names import no command and none of the heavy
libraries; `ls` opens a repository without dulwich (nothing asks its git
config); and what `--help` lists is what the commands themselves say."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from ketch.cli import main as climain
from ketch.cli import summaries
from ketch.cli.group import COMMANDS
from tests.conftest import RunKetch, _subprocess_env

# None of these is needed to parse the command line and find the command.
HEAVY = ("numpy", "boto3", "botocore", "cryptography", "dulwich", "rich", "sqlite3")


def _imported(*argv: str, env: dict[str, str] | None = None) -> list[str]:
    """The modules a fresh interpreter holds after running `ketch ARGV` (or,
    with no ARGV, after importing ketch.cli.main alone)."""
    run = (
        "from ketch.cli.main import main\n"
        f"sys.argv = ['ketch', *{list(argv)!r}]\n"
        "out = sys.stdout\n"
        "sys.stdout = open(os.devnull, 'w')\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "sys.stdout = out\n"
    ) if argv else "import ketch.cli.main\n"
    code = f"import os, sys, json\n{run}print(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          env=_subprocess_env(env), timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return list(json.loads(proc.stdout))


def _heavy(modules: list[str], names: tuple[str, ...] = HEAVY) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & set(names))


@pytest.mark.parametrize("argv", [(), ("--version",), ("--help",)], ids=["import", "version",
                                                                        "help"])
def test_entry_point_imports_nothing_heavy(argv: tuple[str, ...]) -> None:
    modules = _imported(*argv)
    assert _heavy(modules) == []
    assert _commands(modules) == []


def _commands(modules: list[str]) -> list[str]:
    return [m for m in modules if m.removeprefix("ketch.cli.") in COMMANDS.values()]


def test_completing_a_command_name_imports_no_command() -> None:
    # click completes (from these variables) and exits before looking at the arguments
    env = {"_KETCH_COMPLETE": "zsh_complete", "COMP_WORDS": "ketch ", "COMP_CWORD": "1"}
    modules = _imported("--version", env=env)
    assert _heavy(modules) == []
    assert _commands(modules) == []


def test_ls_opens_a_repository_without_dulwich(run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"x" * 100)
    run_ketch("-d", repo, "init", check=True)
    run_ketch("-d", repo, "save", "-n", "s", data, check=True)
    modules = _imported("-d", str(repo), "ls", "s/latest")
    assert "ketch.cli.ls" in modules
    assert _heavy(modules, ("dulwich", "boto3", "botocore", "cryptography", "rich",
                            "sqlite3")) == []


def test_help_lists_what_the_commands_say(run_ketch: RunKetch) -> None:
    group = climain.cli
    assert isinstance(group, click.Group)
    with_short_help = set()
    for name, module in COMMANDS.items():
        cmd = importlib.import_module(f"ketch.cli.{module}").command
        assert isinstance(cmd, click.Command)
        if cmd.short_help:
            with_short_help.add(name)
            assert summaries.SUMMARIES[name] == inspect.cleandoc(cmd.short_help), name
        else:
            first = inspect.cleandoc(cmd.help or "").split("\n\n")[0]
            assert summaries.SUMMARIES[name] == " ".join(first.split()), name
    assert with_short_help == summaries.WHOLE
    # The listing as click itself would make it, from the commands.
    for width in (50, 80):
        ctx = click.Context(group, info_name="ketch", terminal_width=width)
        ours, clicks = click.HelpFormatter(width=width), click.HelpFormatter(width=width)
        group.format_commands(ctx, ours)
        click.Group.format_commands(group, ctx, clicks)
        assert ours.getvalue() == clicks.getvalue()
    shown = run_ketch("--help", check=True).stdout.decode()
    assert all(f"  {name} " in shown for name in COMMANDS)


# A Ctrl-C that arrives while the entry point imports the commands (here: as
# click is imported, by a meta-path hook that signals the process itself).
_CTRL_C_AT_IMPORT = """
import os, signal, sys
class Hook:
    def find_spec(self, name, path, target=None):
        if name == "click":
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Hook())
from ketch.cli.entry import main
sys.argv = ["ketch", "--version"]
raise SystemExit(main())
"""


def test_ctrl_c_while_starting_is_one_line() -> None:
    """Before: Python's traceback of whatever import it cut (11 times in 30
    Ctrl-Cs at random moments of `python -m ketch ls`; the 3 left now fall in
    the interpreter's own start, before any of ketch runs)."""
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_AT_IMPORT], capture_output=True,
                          env=_subprocess_env(None), timeout=60)
    assert proc.returncode == 2, proc
    assert proc.stderr == b"ketch: error: interrupted\n", proc.stderr.decode()


def test_the_scripts_start_at_the_entry_point() -> None:
    """`ketch` and `python -m ketch` both go through cli.entry."""
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert 'ketch = "ketch.cli.entry:main"' in text
    assert "from ketch.cli.entry import main" in (
        Path(climain.__file__).parents[1] / "__main__.py").read_text()
