"""The split phase: `split -n NAME FILE` of the image and the dump into a fresh repo."""

from __future__ import annotations

import os

from ketchbench.common import MB, Context, Row, log, measure, repo_bytes, rev_parse, row_from


def phase_split(ctx: Context) -> list[Row]:
    """Fresh repo per tool; ``split -n NAME FILE`` for each big corpus file in turn.

    repo_bytes is the repository size after that step (cumulative)."""
    rows = []
    for tool in ctx.tools:
        repo = ctx.fresh_repo(tool, "split")
        before: int | None = repo_bytes(repo)
        for item in ctx.corpus.files:
            log(f"{tool.name} split -n {item.name} ({item.size / MB:.0f} MB)")
            os.sync()
            m = measure(tool.cmd(repo, "split", "-n", item.name, str(item.path)), ctx.env)
            tree = rev_parse(repo, f"{item.name}^{{tree}}", ctx.env) if m.returncode == 0 else None
            rows.append(row_from("split", tool, item, m, repo, tree, before))
            before = rows[-1].repo_bytes
    return rows
