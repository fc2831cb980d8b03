"""Wording shared by the commands' messages."""

from __future__ import annotations


def plural(n: int, word: str, words: str | None = None, *, grouped: bool = False) -> str:
    """`1 file`, `2 files`, `0 files` (`words` when adding an s is wrong);
    `grouped` writes thousands as 1,234."""
    count = f"{n:,}" if grouped else str(n)
    return f"{count} {word if n == 1 else (words or word + 's')}"
