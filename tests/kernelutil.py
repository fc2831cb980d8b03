"""Running ketch.split on a chosen rolling-checksum kernel ("c" or "numpy").

The compiled kernel (ketch._rollsum) is built by `pip install`; for a run
with PYTHONPATH=src, `python setup.py build_ext --inplace` builds it.  Under
CI=true its absence fails the tests that need it: CI has a compiler.
"""

from __future__ import annotations

import pytest

import ketch.split
from tests.conftest import in_ci

KERNELS = ["c", "numpy"]


def compiled_kernel_built() -> bool:
    return ketch.split._rollsum is not None


def require_compiled_kernel() -> None:
    if compiled_kernel_built():
        return
    why = "ketch._rollsum is not built (pip install -e . or setup.py build_ext --inplace)"
    if in_ci():
        pytest.fail(f"{why}; CI builds it")
    pytest.skip(why)


def use_kernel(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make Splitters made from now on, and split_files, run kernel `name`."""
    if name == "c":
        require_compiled_kernel()
    monkeypatch.setattr(ketch.split, "KERNEL", name)
