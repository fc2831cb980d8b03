"""`ketch config check` warns when an encryption key's only copy is where it is
used: a machine's bucket key (`encrypt_key`), the backup server's mirror key
(`config check --server`, `[mirror] encrypt_key`). A copy named by path is
read and compared; one on the key's own filesystem is a warning, one that
differs a failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import RunKetch

SHM = Path("/dev/shm")


def _keygen(run_ketch: RunKetch, path: Path) -> Path:
    run_ketch("mirror", "keygen", path, check=True)
    return path


def _machine_check(run_ketch: RunKetch, tmp_path: Path, copy: str | None) -> tuple[int, dict]:
    key = tmp_path / "etc" / "bucket.key"
    if not key.exists():
        key.parent.mkdir(exist_ok=True)
        _keygen(run_ketch, key)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'repository = "{tmp_path / "repo"}"\nencrypt_key = "{key}"\n'
                   + (f'encrypt_key_copy = "{copy}"\n' if copy else "")
                   + f'[[set]]\nname = "d"\npaths = ["{data}"]\n')
    cfg.chmod(0o600)
    got = run_ketch("config", "check", "-c", cfg, "--json")
    checks = {c["what"]: c for c in json.loads(got.stdout)["checks"]}
    return got.returncode, checks["encrypt_key_copy"]


def test_a_machine_key_without_a_copy_is_a_warning(tmp_path: Path, run_ketch: RunKetch) -> None:
    code, check = _machine_check(run_ketch, tmp_path, None)
    assert check["status"] == "warn" and "only copy is on this machine" in check["detail"]
    assert code >= 1
    code, check = _machine_check(run_ketch, tmp_path, "printed, in the office safe")
    assert check["status"] == "ok" and "office safe" in check["detail"]


def test_a_copy_named_by_path_is_compared(tmp_path: Path, run_ketch: RunKetch) -> None:
    (tmp_path / "etc").mkdir()
    key = _keygen(run_ketch, tmp_path / "etc" / "bucket.key")
    beside = tmp_path / "copy.key"
    beside.write_bytes(key.read_bytes())
    _, check = _machine_check(run_ketch, tmp_path, str(beside))
    assert check["status"] == "warn" and "same filesystem" in check["detail"]
    other = _keygen(run_ketch, tmp_path / "other.key")
    _, check = _machine_check(run_ketch, tmp_path, str(other))
    assert check["status"] == "fail" and "is not a copy" in check["detail"]
    _, check = _machine_check(run_ketch, tmp_path, str(tmp_path / "usb" / "k.key"))
    assert check["status"] == "warn" and "not mounted?" in check["detail"]
    away = SHM / f"ketch-test-{os.getpid()}-{tmp_path.name}.key"
    away.write_bytes(key.read_bytes())
    try:
        _, check = _machine_check(run_ketch, tmp_path, str(away))
        apart = os.stat(away).st_dev != os.stat(key).st_dev
        assert check["status"] == ("ok" if apart else "warn"), check
    finally:
        away.unlink()


def test_the_server_mirror_key(tmp_path: Path, run_ketch: RunKetch) -> None:
    root = tmp_path / "srv"
    run_ketch("init", "-d", root / "web1", check=True)
    key = _keygen(run_ketch, tmp_path / "mirror.key")
    conf = tmp_path / "server.toml"
    conf.write_text(f'root = "{root}"\n[mirror]\nencrypt_key = "{key}"\n')
    got = run_ketch("config", "check", "--server", "-c", conf)
    out = got.stdout.decode()
    assert got.returncode == 1, out + got.stderr.decode()
    assert "only copy is on this server" in out and ": 1 repository\n" in out
    assert '[mirror] key_copy = "..."' in out
    conf.write_text(f'root = "{root}"\n[mirror]\nencrypt_key = "{key}"\n'
                    'key_copy = "printed, in the office safe"\n[machine.web2]\nkeep-last = 1\n')
    got = run_ketch("config", "check", "--server", "-c", conf, "--json")
    checks = {c["what"]: c["status"] for c in json.loads(got.stdout)["checks"]}
    assert checks == {"root": "ok", "machine.web2": "warn", "mirror.encrypt_key": "ok",
                      "mirror.key_copy": "ok"}, checks
    conf.write_text(f'root = "{root}"\n[mirror]\nencrypt_key = "mirror.key"\n')
    bad = run_ketch("config", "check", "--server", "-c", conf)
    err = bad.stderr.decode()
    assert bad.returncode == 2 and "mirror.encrypt_key" in err and "Traceback" not in err, err
