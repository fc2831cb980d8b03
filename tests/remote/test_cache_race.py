"""Two saves of one machine into one server repository share the client's idx
cache: when gc removed a pack on the server, both see its idx as stale, and
the second to remove it must not fail (seen in CI as a save ending with
`...pack-X.idx: No such file or directory` during test_gc_concurrent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ketch.remote.client import RemoteRepository
from ketch.remote.spec import parse_remote
from tests.conftest import RunKetch, _subprocess_env
from tests.remote.test_remote import Machine
from tests.services.sshd import SshServer


def _one_save(sshd: SshServer, run_ketch: RunKetch, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    """A server repository holding one save; this process set up to reach it
    as a client does. Its URL."""
    m = Machine.new(sshd, name)
    url = m.url(tmp_path / "server" / "repo")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"hello\n")
    run_ketch("init", "-r", url, env=m.env, check=True)
    run_ketch("save", "-r", url, "-n", "t", "-q", tree, env=m.env, check=True)
    for key, value in m.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", _subprocess_env(None)["PYTHONPATH"])
    return url


def test_stale_idx_removed_by_another_client_first(sshd: SshServer, run_ketch: RunKetch,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = _one_save(sshd, run_ketch, tmp_path, monkeypatch, "cacherace")
    cache_root = tmp_path / "cache"
    gone = "pack-" + "0" * 40 + ".idx"
    real_listdir = os.listdir

    def listdir(path: str | os.PathLike[str] = ".") -> list[str]:
        names = real_listdir(path)
        # The other client's sync removed this stale idx right after our listing.
        return [*names, gone] if str(path).startswith(str(cache_root)) else names

    monkeypatch.setattr(os, "listdir", listdir)
    r = RemoteRepository(parse_remote(url), cache_root=str(cache_root))
    try:
        assert r.has_many([b"\x01" * 20]) == [False]
    finally:
        r.close()


def test_idx_removed_on_the_server_after_its_listing(sshd: SshServer, run_ketch: RunKetch,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """gc removed a pack between the client's `list-indexes` and its
    `send-index` (seen in CI as a save failing with the server's `...idx: No
    such file or directory` in test_gc_concurrent): nothing to cache, and the
    session goes on."""
    url = _one_save(sshd, run_ketch, tmp_path, monkeypatch, "gonerace")
    r = RemoteRepository(parse_remote(url), cache_root=str(tmp_path / "cache"))
    try:
        gone = "pack-" + "1" * 40 + ".idx"
        r.fetch_index(gone)
        assert not os.path.exists(os.path.join(r.cache_dir, gone))
        head = r.read_ref(b"refs/heads/t")
        assert head is not None and r.has_many([head]) == [True]
    finally:
        r.close()
