"""Fixtures for tests against a real ssh remote.

- ``sshd`` (session): a started :class:`tests.services.sshd.SshServer` on
  127.0.0.1.  Tests add their own keys with ``sshd.new_key(...)`` (key names
  must be unique across the session: use the test's name).  Skips when OpenSSH
  is missing, except in CI (``CI=true``) where it fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import SRC_DIR, in_ci
from tests.services.sshd import SshServer, missing_binaries


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    missing = missing_binaries()
    if missing:
        msg = (
            f"OpenSSH is not installed (missing {', '.join(missing)}; "
            "scripts/install-deps.sh installs it: apt-get install openssh-server)"
        )
        if in_ci():
            pytest.fail(f"{msg}; CI requires it")
        pytest.skip(msg)
    began = time.monotonic()
    # The server side runs this checkout's ketch too, not whichever one the
    # interpreter has installed (an editable install may point at another tree).
    with SshServer.start(tmp_path_factory.mktemp("sshd"), env={"PYTHONPATH": str(SRC_DIR)}) \
            as server:
        # Shown with -rP / on failure: start-up cost is worth keeping an eye on.
        print(f"sshd on {server.host}:{server.port} after {time.monotonic() - began:.2f} s")
        yield server
