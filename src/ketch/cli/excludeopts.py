"""The exclude options shared by `index` and `save`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ketch.excludes import ExcludeRules

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    click.option("--exclude", "exclude", multiple=True, metavar="GLOB",
                 help="leave out matching names (no '/') or absolute paths"),
    click.option("--exclude-from", "exclude_from", multiple=True, metavar="FILE",
                 help="read exclude globs from FILE, one per line"),
    click.option("--exclude-rx", "exclude_rx", multiple=True, metavar="RX",
                 help="leave out paths matching this regular expression"),
    click.option("--exclude-if-present", "exclude_if_present", multiple=True, metavar="NAME",
                 help="leave out the contents of directories holding NAME"),
    click.option("-x", "--one-file-system", "one_fs", is_flag=True,
                 help="don't cross filesystem boundaries"),
]


def exclude_options(f: F) -> F:
    for opt in reversed(_OPTIONS):
        f = opt(f)
    return f


def rules_from(kw: dict[str, Any]) -> ExcludeRules:
    return ExcludeRules.build(list(kw.pop("exclude")), list(kw.pop("exclude_from")),
                              list(kw.pop("exclude_rx")), list(kw.pop("exclude_if_present")),
                              bool(kw.pop("one_fs")))
