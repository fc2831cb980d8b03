"""Every `ketch run` saves its config as branch ketch-config: the config's own
directory (or the file alone where the directory is not ketch's), and the
files it names, wherever they are; restored, they equal the originals. A set
may not take the name; the config's retention prunes that branch too."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ketch.jobs.config import parse_config
from ketch.jobs.configsave import CONFIG_SET, config_paths
from tests.conftest import RunKetch
from tests.gitutil import git
from tests.test_restore import snapshot


def _machine(tmp_path: Path, config_dir: Path) -> tuple[Path, Path]:
    """A config in `config_dir` with a set, a dump naming an option file kept
    elsewhere, and a key file beside the config."""
    config_dir.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x\n")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "db.env").write_text("DB_PASSWORD=s3cret\n")
    os.chmod(secrets / "db.env", 0o600)
    (config_dir / "notes.txt").write_text("beside the config\n")
    cfg = config_dir / "ketch.toml"
    cfg.write_text(f'repository = "{tmp_path / "repo"}"\nlock_file = "{tmp_path / "lock"}"\n'
                   f'[retention]\nkeep-last = 2\n'
                   f'[[set]]\nname = "data"\npaths = ["{data}"]\n'
                   f'[[dump]]\nname = "db"\ntype = "command"\ncommand = ["echo", "rows"]\n'
                   f'env_file = "{secrets / "db.env"}"\n')
    cfg.chmod(0o600)
    return cfg, secrets


def test_a_run_saves_the_config_directory_and_the_files_it_names(
        tmp_path: Path, run_ketch: RunKetch) -> None:
    cfg, secrets = _machine(tmp_path, tmp_path / "etc" / "ketch")
    assert config_paths(parse_config(cfg.read_text(), source=str(cfg))) == \
        [str(cfg.parent), str(secrets / "db.env")]
    run_ketch("init", "-d", tmp_path / "repo", check=True)
    for _ in range(3):
        got = run_ketch("run", "--config", cfg, "--json", "--no-notify")
        assert got.returncode == 0, got.stderr.decode()
    report = json.loads(got.stdout)
    text = run_ketch("run", "--config", cfg, "--no-notify", check=True).stdout.decode()
    assert "  config: saved on ketch-config\n" in text
    assert report["config_commit"] and [i["name"] for i in report["items"]] == ["data", "db"]
    # The config's [retention] prunes it as it does the sets.
    log = git(tmp_path / "repo", "rev-list", f"refs/heads/{CONFIG_SET}")
    assert len(log.split()) == 2  # keep-last = 2
    out = tmp_path / "out"
    run_ketch("restore", "-d", tmp_path / "repo", "-C", out,
              f"{CONFIG_SET}/latest{cfg.parent}", check=True)
    run_ketch("restore", "-d", tmp_path / "repo", "-C", out,
              f"{CONFIG_SET}/latest{secrets}/db.env", check=True)
    assert snapshot(out / "ketch") == snapshot(cfg.parent)
    assert (out / "db.env").read_bytes() == (secrets / "db.env").read_bytes()
    assert (out / "db.env").stat().st_mode & 0o777 == 0o600
    assert git(tmp_path / "repo", "fsck", "--strict") is not None


def test_a_config_outside_a_directory_of_its_own_is_saved_alone(tmp_path: Path) -> None:
    home = tmp_path / "ketchup"  # a name with ketch in it is not ketch's directory
    cfg, secrets = _machine(tmp_path, home)
    (home / "big-unrelated-file").write_bytes(b"not ketch's\n")
    assert config_paths(parse_config(cfg.read_text(), source=str(cfg))) == \
        [str(cfg), str(secrets / "db.env")]


def test_a_set_may_not_take_the_name(tmp_path: Path, run_ketch: RunKetch) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'repository = "{tmp_path}/r"\n[[set]]\nname = "{CONFIG_SET}"\n'
                   f'paths = ["{tmp_path}"]\n')
    got = run_ketch("config", "check", "-c", cfg)
    assert got.returncode == 2 and b"reserved" in got.stderr + got.stdout
