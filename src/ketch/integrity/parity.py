"""Placeholder (the parity helper's module replaces it): par2 recovery data
beside a pack, in bup's `fsck -g` layout, made and used by par2cmdline."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from ketch.errors import KetchError


class ParityError(KetchError):
    """par2 is missing or failed."""


def available() -> bool:
    return shutil.which("par2") is not None


def _base(pack_path: str) -> str:
    return pack_path[: -len(".pack")] if pack_path.endswith(".pack") else pack_path


def parity_files(pack_path: str) -> list[str]:
    base = _base(pack_path)
    return sorted(glob.glob(glob.escape(base) + "*.par2"))


def has_parity(pack_path: str) -> bool:
    return os.path.exists(_base(pack_path) + ".par2")


def _par2(*args: str, cwd: str) -> int:
    if not available():
        raise ParityError("par2 is not installed (Debian: apt-get install par2)")
    return subprocess.run(["par2", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False).returncode


def generate(pack_path: str) -> None:
    base = os.path.basename(_base(pack_path))
    d = os.path.dirname(pack_path) or "."
    if _par2("create", "-n1", "-c200", "--", base, base + ".pack", base + ".idx", cwd=d):
        raise ParityError(f"par2 could not make recovery data for {base}.pack")


def verify(pack_path: str) -> bool:
    base = os.path.basename(_base(pack_path))
    return _par2("verify", "-q", "--", base, cwd=os.path.dirname(pack_path) or ".") == 0


def repair(pack_path: str) -> bool:
    base = os.path.basename(_base(pack_path))
    d = os.path.dirname(pack_path) or "."
    ok = _par2("repair", "--", base, cwd=d) == 0
    # par2 keeps the damaged originals as *.1; the repaired files replace them.
    for extra in glob.glob(os.path.join(glob.escape(d), glob.escape(base) + ".*.1")):
        os.unlink(extra)
    return ok
