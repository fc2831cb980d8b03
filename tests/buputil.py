"""The real bup, the oracle of the compatibility tests. Missing bup skips a test
locally and fails it in CI (`CI=true`), where scripts/install-deps.sh installs it.
(The `git_env` fixture in conftest.py keeps bup and git away from the user's config.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

import pytest

from tests.conftest import in_ci


def bup_exe() -> str:
    exe = shutil.which("bup")
    if exe is None:
        if in_ci():
            pytest.fail("bup is not installed; CI requires it")
        pytest.skip("bup is not installed (apt-get install bup)")
    return exe


def bup_run(repo: str | os.PathLike[str], *args: str | bytes | os.PathLike[str],
            input: bytes | None = None, env: Mapping[str, str] | None = None,
            check: bool = True, prefix: Sequence[str] = (),
            timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    """`bup -d REPO ARGS` (after `prefix`, e.g. an unshare); AssertionError on failure."""
    cmd = [*prefix, bup_exe(), "-d", os.fspath(repo), *(os.fsencode(a) for a in args)]
    proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          env=dict(env) if env is not None else None)
    if check and proc.returncode != 0:
        raise AssertionError(f"bup {args!r} failed ({proc.returncode}): "
                             f"{proc.stderr.decode(errors='replace')}")
    return proc


def run_bup(repo: str | os.PathLike[str], *args: str | bytes | os.PathLike[str],
            input: bytes | None = None, env: Mapping[str, str] | None = None,
            check: bool = True) -> bytes:
    """bup's stdout."""
    return bup_run(repo, *args, input=input, env=env, check=check).stdout
