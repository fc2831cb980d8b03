"""Parity made as packs are written: `ketch save --par2`, `ketch run` with
`par2 = true` in the config."""

from __future__ import annotations

from collections.abc import Callable

from ketch.integrity import parity
from ketch.repo import WritableRepository


def protect_new_packs(repo: WritableRepository, warn: Callable[[str], None]) -> None:
    """Have parity made for every pack `repo` writes from now on. A local pack
    that par2 fails on is a warning (the save itself succeeded: `ketch fsck -g`
    makes the parity later); a server that cannot make parity refuses here."""
    said_missing: list[bool] = []

    def generate(pack_path: str) -> None:
        if not parity.available():
            if not said_missing:  # once, not once per pack
                said_missing.append(True)
                warn(f"{parity.NOT_INSTALLED}: the new packs have no parity")
            return
        try:
            parity.generate(pack_path)
        except parity.ParityError as e:
            warn(str(e))

    repo.make_parity(generate)
