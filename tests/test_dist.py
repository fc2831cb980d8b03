"""The wheel `make dist` builds is ketch on its own (issue 16, installing on a fleet).

Built the way `make dist` builds it (the project venv's `pip wheel --no-deps`),
from a copy of the tree so the test leaves no build/ behind, then installed
with its dependencies and nothing else into a fresh virtual environment of the
python3 the project's venv was made from; that environment's `ketch`, not the
project's, saves and restores. Then scripts/install-ketch.sh installs the same
wheel twice (the second run replaces it in place) under a prefix and a link
directory in tmp, and `ketch server setup-client` run through the link writes
the link's path into the forced command.

Slow (a wheel, a wheelhouse of the dependencies, two environments): one test,
so pytest-xdist does not build it all twice on two workers. The dependencies
come from the package index once (`pip wheel` into a wheelhouse); both
installs then take them from there with --no-index, which is also the
script's offline --find-links path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-ketch.sh"
WEB = ROOT / "src" / "ketch" / "web"
# The interpreter the project's venv runs on (Debian's python3 in CI).
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
PUBKEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGGiLAgeuEcHgnoEVVBESIeXIBDGfo2p1Ks4KvnSX9Gn "
          "web1@test")


def _run(*args: str | Path, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=600)
    assert r.returncode == 0, f"{args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment minus what would lead a python to the project's ketch
    (or force the numpy kernel)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "KETCH_ROLLSUM")}
    env.update(extra)
    return env


def _build(tmp: Path) -> tuple[Path, Path]:
    """(the wheel, a wheelhouse of its dependencies)."""
    tree = tmp / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"))
    # make dist's recipe.
    _run(sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps",
         "-w", tmp / "dist", tree)
    wheels = sorted((tmp / "dist").glob("ketch-*.whl"))
    assert len(wheels) == 1, wheels
    house = tmp / "wheelhouse"
    _run(sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q",
         "-w", house, wheels[0])
    return wheels[0], house


def _check_contents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    kernels = [n for n in names if n.startswith("ketch/_rollsum.") and n.endswith(".so")]
    if not kernels:
        # CI has gcc and python3-dev; the conftest hook fails this skip there.
        pytest.skip(f"{wheel.name} has no compiled ketch/_rollsum: gcc or python3-dev missing")
    assert "-linux_" in wheel.name, wheel.name  # a platform wheel, for this machine
    for sub in ("templates", "static"):
        want = sorted(p.name for p in (WEB / sub).iterdir())
        got = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith(f"ketch/web/{sub}/"))
        assert got == want, sub


def _fresh_venv(venv: Path, wheel: Path, house: Path) -> None:
    r = subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"{BASE_PYTHON} -m venv failed (python3-venv missing?): {r.stderr.strip()}")
    _run(venv / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", "-q",
         "--no-index", "--find-links", house, wheel, env=_clean_env())


def _make_source(src: Path) -> None:
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "text").write_text("hello\n")
    (src / "empty").write_bytes(b"")
    # Big enough for the rolling checksum to cut it into several chunks.
    (src / "sub" / "random").write_bytes(os.urandom(3 << 20))
    (src / "sub" / "deeper" / "zeros").write_bytes(bytes(1 << 20))


def _tree(top: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(top)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(top.rglob("*"))}


def _save_and_restore(venv: Path, tmp: Path) -> None:
    ketch = venv / "bin" / "ketch"
    env = _clean_env()
    out = _run(ketch, "--version", env=env, cwd=tmp).stdout
    assert out.startswith("ketch, version "), out
    probe = _run(venv / "bin" / "python", "-c",
                 "import ketch, ketch._rollsum, ketch.split\n"
                 "from importlib.resources import files\n"
                 "print(ketch.__file__)\n"
                 "print(ketch.split.KERNEL)\n"
                 "print(' '.join(sorted(p.name for p in (files('ketch.web') / 'templates')"
                 ".iterdir())))\n", env=env, cwd=tmp).stdout.splitlines()
    assert Path(probe[0]).is_relative_to(venv), probe[0]  # this venv's ketch, not the project's
    assert probe[1] == "c", "the wheel's compiled kernel did not load"
    assert probe[2].split() == sorted(p.name for p in (WEB / "templates").iterdir())

    src, repo, restored = tmp / "src", tmp / "repo", tmp / "out"
    _make_source(src)
    _run(ketch, "init", "-d", repo, env=env, cwd=tmp)
    _run(ketch, "save", "-d", repo, "-n", "x", src, env=env, cwd=tmp)
    _run(ketch, "restore", "-d", repo, "-C", restored, f"x/latest{src}", env=env, cwd=tmp)
    assert _tree(restored / "src") == _tree(src)


def _install_script(wheel: Path, house: Path, tmp: Path) -> None:
    prefix, bin_dir = tmp / "opt" / "ketch", tmp / "bin"
    # The script looks for python3.X (the wheel's) on the PATH: put the one
    # the project runs on first, so it never needs apt-get here.
    env = _clean_env(PATH=f"{Path(BASE_PYTHON).parent}{os.pathsep}{os.environ['PATH']}")
    args = ["bash", SCRIPT, wheel, "--prefix", prefix, "--bin-dir", bin_dir,
            "--find-links", house]
    first = _run(*args, env=env)
    link = bin_dir / "ketch"
    assert link.is_symlink() and os.readlink(link) == str(prefix / "bin" / "ketch")
    assert "ketch, version" in first.stdout
    again = _run(*args, env=env)
    assert "(replacing " in again.stdout, again.stdout
    assert _run(link, "--version", env=env).stdout.startswith("ketch, version ")

    bad = subprocess.run(["bash", str(SCRIPT), str(tmp / "ketch-9-cp311-cp311-linux_x86_64.whl"),
                          "--prefix", str(prefix)], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad

    # The server's forced command runs the `ketch` on the PATH: the link,
    # which a reinstall keeps, not the environment's own script.
    keys = tmp / "home" / ".ssh" / "authorized_keys"
    keys.parent.mkdir(parents=True)
    _run(link, "server", "setup-client", "--root", tmp / "srv", "--authorized-keys", keys,
         "web1", PUBKEY, env=_clean_env(PATH=f"{bin_dir}{os.pathsep}/usr/bin:/bin"))
    line = keys.read_text()
    assert line.startswith(f'command="{link} server --restrict-to {tmp / "srv" / "web1"} '), line


def test_wheel_alone_runs_ketch_and_install_script_links_it(tmp_path: Path) -> None:
    tmp = tmp_path
    wheel, house = _build(tmp)
    _check_contents(wheel)
    venv = tmp / "venv"
    _fresh_venv(venv, wheel, house)
    (tmp / "work").mkdir()
    _save_and_restore(venv, tmp / "work")
    (tmp / "script").mkdir()
    _install_script(wheel, house, tmp / "script")
