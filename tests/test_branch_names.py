"""Branch names are one path component (issue 17 item 6): `ls NAME/DATE/PATH` and
`restore NAME/latest/...` read the first component as the branch, so a name with
'/' (or one starting with '.') is refused where it is given, before any data is
read: save -n, split -n, and the config's set and dump names."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RunKetch

BAD = [("a/b", "'/'"), ("etc/foo", "'/'"), (".hidden", "'.'")]


def _no_data(repo: Path) -> None:
    assert os.listdir(repo / "refs" / "heads") == []
    assert [n for n in os.listdir(repo / "objects" / "pack") if n.endswith(".pack")] == []


@pytest.mark.parametrize("name,why", BAD)
def test_save_refuses_before_reading(run_ketch: RunKetch, repo_dir: Path, tmp_path: Path,
                                     name: str, why: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    proc = run_ketch("save", "-d", repo_dir, "-n", name, src)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.startswith(f"ketch: error: invalid branch name '{name}': "), err
    assert why in err and len(err.splitlines()) == 1 and " b'" not in err
    _no_data(repo_dir)


@pytest.mark.parametrize("name,why", BAD)
def test_split_refuses(run_ketch: RunKetch, repo_dir: Path, name: str, why: str) -> None:
    proc = run_ketch("split", "-d", repo_dir, "-n", name, input=b"data" * 1000)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.startswith(f"ketch: error: invalid branch name '{name}': "), err
    assert why in err and len(err.splitlines()) == 1
    _no_data(repo_dir)


def test_a_refused_name_would_have_been_unreadable(run_ketch: RunKetch, repo_dir: Path,
                                                   tmp_path: Path) -> None:
    # Why: `etc` and `etc/foo` cannot both be git branches, and ls reads `a/b` as
    # branch `a`, save `b`. A plain name still saves and lists.
    (tmp_path / "f").write_bytes(b"x")
    run_ketch("save", "-d", repo_dir, "-n", "etc", tmp_path / "f", check=True)
    proc = run_ketch("save", "-d", repo_dir, "-n", "etc/foo", tmp_path / "f")
    assert proc.returncode == 2 and b"gave up" not in proc.stderr
    assert run_ketch("ls", "-d", repo_dir, check=True).stdout.split() == [b"etc"]


@pytest.mark.parametrize("section", ["set", "dump"])
def test_config_check_refuses(run_ketch: RunKetch, tmp_path: Path, section: str) -> None:
    cfg = tmp_path / "ketch.toml"
    body = ('paths = ["/etc"]\n' if section == "set"
            else 'type = "command"\ncommand = ["true"]\n')
    cfg.write_text(f'repository = "{tmp_path}/repo"\n\n[[{section}]]\nname = "etc/foo"\n'
                   + body)
    proc = run_ketch("config", "check", "--config", cfg)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert (f"{cfg}:4: {section}[1].name: 'etc/foo' is not usable as a branch name: "
            "it contains '/'") in err, err
    assert " b'" not in err


def test_git_accepts_every_name_we_accept(repo_dir: Path) -> None:
    from ketch.git.refs import validate_branch_name

    for name in ("main", "x-y_z", "v1.2", "@x", "caf\u00e9", "lock"):
        validate_branch_name(name.encode())
        subprocess.run(["git", "check-ref-format", "--branch", name], check=True,
                       capture_output=True)
