"""Where the `ketch` script and `python -m ketch` start.

Importing the commands (click and what they need) takes a noticeable part of
a second, and a Ctrl-C in that time ended the process with Python's
traceback (11 times in 30 in a test). Until `main` takes the signal over, a
Ctrl-C ends it with the line `main` would print for it, and its exit code.
"""

from __future__ import annotations

import os
import signal
from types import FrameType


def _early(signum: int, frame: FrameType | None) -> None:
    os.write(2, b"ketch: error: interrupted\n")
    os._exit(2)


def main() -> int:
    signal.signal(signal.SIGINT, _early)
    from ketch.cli.main import main as run

    return run()
