"""Which repository a command uses without -d/-r (issue 17, item 2): -d, else -r,
else $KETCH_DIR, else the `repository` of the machine's config ($KETCH_CONFIG),
else ~/.ketch; said on a terminal, silent in a pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import RunKetch, _subprocess_env


def write_config(path: Path, repository: str, extra: str = "") -> Path:
    path.write_text(f'repository = "{repository}"\n{extra}')
    return path


def saved_tree(tmp_path: Path, run_ketch: RunKetch, repo: Path, name: str) -> Path:
    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "app.sql").write_bytes(f"-- dump of {name}\n".encode() * 1000)
    run_ketch("save", "-d", repo, "-n", name, "--strip", src, check=True)
    return src


def test_commands_use_the_config_repository(tmp_path: Path, repo_dir: Path,
                                            run_ketch: RunKetch) -> None:
    cfg = write_config(tmp_path / "ketch.toml", str(repo_dir))
    env = {"KETCH_CONFIG": str(cfg)}
    src = tmp_path / "data"
    src.mkdir()
    (src / "f.txt").write_text("hello\n")
    r = run_ketch("save", "-n", "etc", src, env=env)
    assert r.returncode == 0, r.stderr
    ls = run_ketch("ls", "etc/latest" + str(src), env=env)
    assert (ls.returncode, ls.stdout, ls.stderr) == (0, b"f.txt\n", b"")
    cat = run_ketch("cat-file", f"etc/latest{src}/f.txt", env=env)
    assert (cat.returncode, cat.stdout, cat.stderr) == (0, b"hello\n", b"")
    out = tmp_path / "out"
    r = run_ketch("restore", "-q", "-C", out, f"etc/latest{src}/f.txt", env=env)
    assert r.returncode == 0, r.stderr
    assert (out / "f.txt").read_text() == "hello\n"
    r = run_ketch("index", "-q", src, env=env)
    assert r.returncode == 0, r.stderr
    r = run_ketch("split", "-q", "-n", "blob", input=b"x" * 100, env=env)
    assert r.returncode == 0, r.stderr
    assert run_ketch("join", "blob", env=env).stdout == b"x" * 100


def test_config_repository_is_named_on_a_terminal_only(tmp_path: Path, repo_dir: Path) -> None:
    cfg = write_config(tmp_path / "ketch.toml", str(repo_dir))
    master, slave = os.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "ketch", "ls"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=slave, timeout=60,
                              env=_subprocess_env({"KETCH_CONFIG": str(cfg)}))
        os.close(slave)
        said = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            said += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert f"ketch: using repository {repo_dir} from {cfg}".encode() in said


def test_readme_dump_restore_line_uses_the_config(tmp_path: Path, repo_dir: Path,
                                                  run_ketch: RunKetch) -> None:
    """`ketch cat-file NAME/latest/FILE | CLIENT`, as the README writes it, with no -d."""
    saved_tree(tmp_path, run_ketch, repo_dir, "mysql")
    cfg = write_config(tmp_path / "ketch.toml", str(repo_dir))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    ketch = bindir / "ketch"
    ketch.write_text(f"#!/bin/sh\nexec {sys.executable} -m ketch \"$@\"\n")
    ketch.chmod(0o755)
    env = _subprocess_env({"KETCH_CONFIG": str(cfg),
                           "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"})
    line = "ketch cat-file mysql/latest/app.sql | wc -l"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True, env=env,
                       timeout=60)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, b"1000", b"")
    # Without the config's repository, the pipeline fails (with pipefail) and says why.
    write_config(cfg, str(tmp_path / "gone"))
    r = subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True, env=env,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr.decode() == (f"ketch: error: {tmp_path / 'gone'}: not a repository (the "
                                 f"repository of {cfg}; create it with 'ketch init')\n")


def test_explicit_dir_beats_the_config(tmp_path: Path, repo_dir: Path,
                                       run_ketch: RunKetch) -> None:
    other = tmp_path / "other"
    run_ketch("init", "-d", other, check=True)
    saved_tree(tmp_path, run_ketch, repo_dir, "in-config")
    saved_tree(tmp_path, run_ketch, other, "in-other")
    cfg = write_config(tmp_path / "ketch.toml", str(repo_dir))
    env = {"KETCH_CONFIG": str(cfg)}
    assert run_ketch("ls", env=env).stdout == b"in-config\n"
    assert run_ketch("ls", "-d", other, env=env).stdout == b"in-other\n"
    assert run_ketch("-d", other, "ls", env=env).stdout == b"in-other\n"
    assert run_ketch("ls", env={**env, "KETCH_DIR": str(other)}).stdout == b"in-other\n"


def test_broken_config_does_not_break_explicit_dir(tmp_path: Path, repo_dir: Path,
                                                   run_ketch: RunKetch) -> None:
    saved_tree(tmp_path, run_ketch, repo_dir, "b")
    cfg = tmp_path / "ketch.toml"
    cfg.write_text('repository = "/srv/x"\npahts = 3\n')
    env = {"KETCH_CONFIG": str(cfg)}
    r = run_ketch("ls", "-d", repo_dir, env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"b\n", b"")
    r = run_ketch("ls", env=env)
    assert r.returncode == 2
    lines = r.stderr.decode().splitlines()
    assert lines[0] == (f"ketch: error: no -d or -r given, so the repository is the one in "
                        f"{cfg}, which has errors (give -d DIR or -r REMOTE to go on without it):")
    assert lines[1].startswith(f"ketch: error: {cfg}:2: pahts: unknown key")
    assert b"Traceback" not in r.stderr


def test_not_a_repository_says_where_it_looked(tmp_path: Path, run_ketch: RunKetch) -> None:
    missing_cfg = tmp_path / "none.toml"
    r = run_ketch("ls", env={"KETCH_CONFIG": str(missing_cfg)})
    assert r.returncode == 2
    home = os.environ["HOME"]
    assert r.stderr.decode() == (
        f"ketch: error: {home}/.ketch: not a repository (the default: no -d or -r given, "
        f"$KETCH_DIR unset, no {missing_cfg}; give -d DIR or -r REMOTE, or create one with "
        "'ketch config init' or 'ketch init')\n")
    r = run_ketch("ls", env={"KETCH_DIR": str(tmp_path / "kd")})
    assert b"named by $KETCH_DIR" in r.stderr
    r = run_ketch("ls", "-d", tmp_path / "d")
    assert r.stderr.decode() == (f"ketch: error: {tmp_path / 'd'}: not a repository "
                                 f"(run 'ketch init -d {tmp_path / 'd'}')\n")


def test_init_creates_the_config_repository(tmp_path: Path, run_ketch: RunKetch) -> None:
    target = tmp_path / "backups"
    cfg = write_config(tmp_path / "ketch.toml", str(target))
    r = run_ketch("init", env={"KETCH_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stderr
    assert (target / "objects" / "pack").is_dir()
    assert f"Initialized ketch repository in {target}" in r.stderr.decode()
    assert run_ketch("ls", env={"KETCH_CONFIG": str(cfg)}).returncode == 0
