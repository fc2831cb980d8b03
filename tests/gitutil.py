"""Running real git in tests (the autouse `git_env` fixture in conftest.py keeps it
away from the user's config and identity)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git(repo: Path | str, *args: str | bytes, input: bytes | None = None) -> bytes:
    return subprocess.run(["git", "--git-dir", os.fspath(repo), *args], input=input,
                          check=True, capture_output=True).stdout


def git_init_bare(path: Path | str) -> None:
    subprocess.run(["git", "init", "-q", "--bare", os.fspath(path)], check=True)
