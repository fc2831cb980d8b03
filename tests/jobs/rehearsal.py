"""What the disaster rehearsals share: an operator's shell with `ketch` on
its PATH (this checkout's, as the installed one would be), a machine's new ssh
key, and the command lines of a printed runbook."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.conftest import SRC_DIR


def ketch_on_path(bindir: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ with `env` over it, and a `ketch` in `bindir` (made here) first
    on the PATH."""
    bindir.mkdir(parents=True)
    (bindir / "ketch").write_text(f'#!/bin/sh\nexec {sys.executable} -m ketch "$@"\n')
    (bindir / "ketch").chmod(0o755)
    out = {**os.environ, "PYTHONPATH": str(SRC_DIR), **(env or {})}
    out["PATH"] = f"{bindir}{os.pathsep}{out.get('PATH', os.defpath)}"
    return out


def keygen(path: Path, comment: str | None = None) -> Path:
    """A new ed25519 key pair at `path` (and `path`.pub), no passphrase."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment or path.name,
                    "-f", path], check=True, capture_output=True)
    return path


def printed_commands(text: str) -> list[str]:
    """The command lines of `ketch runbook`'s text: neither comments nor blanks."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]
