"""What `ketch config init` does besides asking: suggest paths and set names,
detect local databases, build and validate the config, write it privately, and
create a local repository that does not exist yet."""

from __future__ import annotations

import os
import re
import tempfile

from ketch.errors import KetchError, UsageError
from ketch.jobs.config import ConfigError, parse_config
from ketch.jobs.configwrite import render_config
from ketch.jobs.model import BackupSet, Config, DumpSpec, Schedule
from ketch.remote.location import is_remote

DEFAULT_REPOSITORY = "/var/backups/ketch"
SUGGESTED_PATHS = ("/etc", "/home", "/root", "/var/www")


def existing_paths(candidates: tuple[str, ...] = SUGGESTED_PATHS) -> list[str]:
    return [p for p in candidates if os.path.isdir(p)]


def set_name_for(path: str) -> str:
    """A branch name for a path: /etc -> etc, /var/www -> var-www, / -> rootfs."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.strip("/")).strip("-.")
    return name or "rootfs"


def parse_set_option(text: str, what: str = "--set") -> BackupSet:
    """`NAME=PATH[,PATH...]` (or just `PATH`, named after it) from `--set`. Relative
    paths are taken from the current directory: on the command line that is what
    the user means, unlike in the config file, which cron and systemd read from /."""
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = "", text
    paths = [os.path.abspath(os.path.expanduser(p)) for p in rest.split(",") if p]
    if not paths:
        raise UsageError(f"{what} {text!r}: no paths (expected NAME=PATH[,PATH...])")
    return BackupSet(name=name or set_name_for(paths[0]), paths=paths)


def parse_paths_answer(text: str) -> list[BackupSet]:
    """The answer to "which directories": space-separated PATHs (a set each) or
    NAME=PATH[,PATH...] words, as `--set` takes them."""
    return [parse_set_option(word, "answer") if "=" in word else sets_for_paths([word])[0]
            for word in text.split()]


def missing_paths(sets: list[BackupSet]) -> list[str]:
    """Set paths that do not exist: `ketch run` fails such a set, so init asks first."""
    return [p for s in sets for p in s.paths if not os.path.lexists(p)]


def sets_for_paths(paths: list[str]) -> list[BackupSet]:
    """One set per path, so that each restores on its own and its index stays stable."""
    return [BackupSet(name=set_name_for(p), paths=[os.path.abspath(p)]) for p in paths]


def detect_dumps() -> tuple[list[DumpSpec], str | None]:
    """Local MySQL/MariaDB and PostgreSQL databases to dump, and why none were found
    if detection itself failed (it is a convenience: never fatal)."""
    from ketch.jobs.dumps import detect_local_databases

    try:
        found: list[DumpSpec] = detect_local_databases()
    except (KetchError, OSError) as e:
        return [], f"database detection failed: {e}"
    return found, None


def normalize_repository(location: str) -> str:
    """A local repository given on the command line, made absolute (see parse_set_option)."""
    if is_remote(location):
        return location
    return os.path.abspath(os.path.expanduser(location))


def new_config(repository: str, sets: list[BackupSet], dumps: list[DumpSpec],
               time: str = "22:00") -> Config:
    """A validated Config; UsageError naming the offending key if flags made a bad one."""
    cfg = Config(repository=repository, sets=sets, dumps=dumps,
                 schedule=Schedule(time=time))
    try:
        parse_config(render_config(cfg, comments=False), "<new config>")
    except ConfigError as e:
        # Line numbers of a text nobody has seen would only confuse: keep the keys.
        raise UsageError("\n".join(f"{i.key}: {i.message}" if i.key else i.message
                                   for i in e.issues)) from None
    return cfg


def write_config(path: str, text: str, *, force: bool = False) -> None:
    """Write `text` to `path`, mode 0600 (it may come to name credential files and
    hosts), creating its directory 0700; an existing file only with `force`."""
    if os.path.exists(path) and not force:
        raise UsageError(f"{path} already exists (use --force to replace it)")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ketch-config-", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def ensure_repository(location: str) -> str | None:
    """Create a local repository that does not exist yet (or is an empty directory);
    a message saying so, or None. Remote repositories are left to `ketch init -r`:
    creating one may need an ssh login the user has not set up yet."""
    if is_remote(location):
        return None
    if os.path.exists(location) and (not os.path.isdir(location) or os.listdir(location)):
        return None  # an existing repository, or something `config check` will report
    from ketch.localrepo import init_repository

    init_repository(location)
    return f"Created repository {location}"


def next_steps(config_path: str, default_path: str, repository: str) -> list[str]:
    """What to run after `config init`, each with why."""
    opt = "" if os.path.abspath(config_path) == os.path.abspath(default_path) \
        else f" --config {config_path}"
    steps = [(f"ketch init -r {repository}", "create the repository on the server")] \
        if is_remote(repository) else []
    steps += [(f"ketch config check{opt}", "is everything it names reachable?"),
              (f"ketch schedule install{opt}", "run it nightly"),
              (f"ketch run{opt}", "the first backup, now")]
    width = max(len(cmd) for cmd, _ in steps)
    return [f"{cmd.ljust(width)}  # {why}" for cmd, why in steps]
