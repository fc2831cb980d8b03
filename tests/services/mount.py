"""`ketch mount` as a real process over /dev/fuse, in the foreground, until the
test unmounts it (fusermount3 -u) or signals it as Ctrl-C would.

    with KetchMount.start(tmp_path, "-d", repo) as m:
        os.listdir(m.path)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Self

import pytest

from tests.conftest import _subprocess_env, in_ci
from tests.services.process import ServiceProcess

START_TIMEOUT = 30.0


def require_fuse() -> None:
    """Skip without /dev/fuse and fusermount3; under CI, fail."""
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        if in_ci():
            pytest.fail("FUSE is needed: /dev/fuse and fusermount3 (apt-get install fuse3)")
        pytest.skip("no FUSE here")


class KetchMount(ServiceProcess):
    name = "ketch mount"

    def __init__(self, workdir: Path, args: tuple[str | Path, ...],
                 env: dict[str, str] | None) -> None:
        super().__init__(workdir / "mount.log")
        self.path = workdir / "mnt"
        self.args = [str(a) for a in args]
        self.env = env

    @classmethod
    def start(cls, workdir: Path, *args: str | Path, env: dict[str, str] | None = None) -> Self:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "mnt").mkdir()
        return cls(workdir, args, env)._start()

    def _launch(self) -> None:
        self.spawn([sys.executable, "-m", "ketch", "mount", *self.args, str(self.path)],
                   env=_subprocess_env(self.env))
        self.wait_ready(lambda: os.path.ismount(self.path), START_TIMEOUT,
                        f"ketch mount at {self.path}")

    def interrupt(self, timeout: float = 30.0) -> int:
        """SIGINT, as Ctrl-C on its terminal; its exit code."""
        proc = self._proc
        assert proc is not None
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout)
        self._proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], check=False,
                           capture_output=True)
        self.stop_process()
