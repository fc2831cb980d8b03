"""Reading a repository's git config (dulwich parses the format)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ketch.errors import KetchError

if TYPE_CHECKING:
    from dulwich.config import ConfigFile


class GitConfig:
    """Read on the first question: every repository opens one, and most
    commands (ls, restore, cat-file) never ask it anything, nor need dulwich."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._parsed: ConfigFile | None = None

    @property
    def _cfg(self) -> ConfigFile:
        if self._parsed is None:
            from dulwich.config import ConfigFile

            try:
                exists = os.path.exists(self.path)
                self._parsed = ConfigFile.from_path(self.path) if exists else ConfigFile()
            except (ValueError, OSError) as e:
                raise KetchError(f"{self.path}: unreadable git config: {e}") from e
        return self._parsed

    def get(self, section: str, key: str) -> str | None:
        try:
            value = self._cfg.get((section.encode(),), key.encode())
        except KeyError:
            return None
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

    def get_int(self, section: str, key: str) -> int | None:
        """An integer with git's k/m/g suffixes."""
        v = self.get(section, key)
        if v is None:
            return None
        v = v.strip().lower()
        mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(v[-1:], 1)
        try:
            return int(v[:-1] if mult > 1 else v) * mult
        except ValueError as e:
            raise KetchError(f"{self.path}: {section}.{key} is not a number: {v!r}") from e

    def get_bool(self, section: str, key: str, default: bool = False) -> bool:
        v = self.get(section, key)
        if v is None:
            return default
        return v.strip().lower() in ("true", "yes", "on", "1", "")
