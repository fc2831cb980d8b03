"""`--endpoint-url` and `--encrypt-key` on every command that reads `-r s3://...`
(issue 17, item 11), against a real SeaweedFS, with $KETCH_S3_ENDPOINT unset."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import RunKetch
from tests.offsite.conftest import S3Server


@pytest.fixture
def pushed(tmp_path: Path, s3_env: S3Server, run_ketch: RunKetch,
           monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, str]:
    """(data dir, s3://BUCKET/m, endpoint) of a repository pushed as `web1`."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("KETCH_S3_ENDPOINT")
    monkeypatch.delenv("KETCH_ENCRYPT_KEY", raising=False)
    repo, data = tmp_path / "srv" / "web1", tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_bytes(b"from the mirror\n")
    run_ketch("init", "-d", repo, check=True)
    run_ketch("save", "-d", repo, "-n", "etc", data, check=True)
    run_ketch("split", "-d", repo, "-n", "blob", input=b"split bytes", check=True)
    return data, f"s3://{s3_env.new_bucket()}/m", s3_env["endpoint"]


def test_reading_commands_take_endpoint_url(pushed: tuple[Path, str, str], tmp_path: Path,
                                            run_ketch: RunKetch) -> None:
    data, url, endpoint = pushed
    run_ketch("mirror", "push", tmp_path / "srv" / "web1", url, "--endpoint-url", endpoint,
              check=True)
    loc = f"{url}/web1"
    ep = ("--endpoint-url", endpoint)
    r = run_ketch("ls", "-r", loc, *ep)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"blob\netc\n", b"")
    r = run_ketch("-r", loc, *ep, "ls", f"etc/latest{data}")  # before the command name
    assert (r.returncode, r.stdout) == (0, b"f.txt\n")
    r = run_ketch("cat-file", "-r", loc, *ep, f"etc/latest{data}/f.txt")
    assert (r.returncode, r.stdout) == (0, b"from the mirror\n")
    r = run_ketch("restore", "-q", "-r", loc, *ep, "-C", tmp_path / "out", f"etc/latest{data}/")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "f.txt").read_bytes() == b"from the mirror\n"
    r = run_ketch("join", "-r", loc, *ep, "blob")
    assert (r.returncode, r.stdout) == (0, b"split bytes")


def test_reading_commands_take_encrypt_key(pushed: tuple[Path, str, str], tmp_path: Path,
                                           run_ketch: RunKetch) -> None:
    data, url, endpoint = pushed
    key = tmp_path / "mirror.key"
    run_ketch("mirror", "keygen", key, check=True)
    # Before the command name, as on the reading commands.
    run_ketch("--endpoint-url", endpoint, "--encrypt-key", key, "mirror", "push",
              tmp_path / "srv" / "web1", url, check=True)
    loc = f"{url}/web1"
    blind = run_ketch("ls", "-r", loc, "--endpoint-url", endpoint)
    assert blind.returncode == 2 and b"is encrypted" in blind.stderr
    r = run_ketch("ls", "-r", loc, "--endpoint-url", endpoint, "--encrypt-key", key)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"blob\netc\n", b"")
    r = run_ketch("--encrypt-key", key, "--endpoint-url", endpoint, "cat-file", "-r", loc,
                  f"etc/latest{data}/f.txt")
    assert (r.returncode, r.stdout) == (0, b"from the mirror\n")


def test_remote_help_names_s3(run_ketch: RunKetch) -> None:
    for cmd in ("ls", "cat-file", "restore", "join"):
        text = run_ketch(cmd, "--help", check=True).stdout.decode()
        assert "s3://BUCKET/PREFIX/REPO" in text and "--endpoint-url" in text, cmd
        assert "--encrypt-key" in text, cmd
