"""What a machine's config says, as plain data (the TOML loader in config.py
produces it; dumps, runner, schedule and notify consume it).

    repository = "ssh://backup@server/"       # or a local path
    log_file = "/var/log/ketch/run.log"       # optional
    [retention] keep-last, keep-daily, ... keep-within: every set's and dump's
    [[set]]     name, paths, exclude, exclude_from, exclude_rx,
                exclude_if_present, one_file_system, [set.retention]
    [[dump]]    name, type = mysql|postgresql|mongodb|sqlite|command, ...,
                [dump.retention]
    [schedule]  time = "22:00", randomized_delay = "30m"
    [notify]    ping_url, on_success, [notify.email] ...
    [drill]     schedule = "Sun 04:00", sample = 100, enabled
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DUMP_TYPES = ("mysql", "postgresql", "mongodb", "sqlite", "command")
DEFAULT_CONFIG = "/etc/ketch/ketch.toml"
# A retention table as the TOML has it ({"keep-daily": 7, "keep-within": "30d"});
# `KeepPolicy.from_mapping` reads it. None: not given (a set or dump then has
# the config's [retention]); {}: given empty (every save is kept).
Retention = dict[str, int | str]


def default_config_path() -> str:
    # Here, not in the loader: every command asks (for its default repository),
    # and the loader and its checks cost ~35 ms to import.
    return os.environ.get("KETCH_CONFIG") or DEFAULT_CONFIG


@dataclass
class BackupSet:
    """Filesystem paths saved together as one save on branch `name`."""

    name: str
    paths: list[str]
    exclude: list[str] = field(default_factory=list)
    exclude_from: list[str] = field(default_factory=list)
    exclude_rx: list[str] = field(default_factory=list)
    exclude_if_present: list[str] = field(default_factory=list)
    one_file_system: bool = False
    retention: Retention | None = None  # replaces the config's [retention] for this set


@dataclass
class DumpSpec:
    """A database (or any command's stdout) streamed into branch `name`: one save
    per run, holding one file per database (e.g. `app.sql`).

    Credentials never appear on a command line or in a log: `options_file`
    (MySQL/MariaDB `--defaults-extra-file`), `passfile` (PostgreSQL PGPASSFILE)
    or `env` / `env_file` (variables passed to the dump process)."""

    name: str
    type: str  # one of DUMP_TYPES
    # mysql, postgresql, mongodb: which databases; empty = all of them
    databases: list[str] = field(default_factory=list)
    host: str | None = None  # host name, or a unix socket directory/path
    port: int | None = None
    user: str | None = None
    options_file: str | None = None  # mysql: --defaults-extra-file
    passfile: str | None = None  # postgresql: PGPASSFILE
    globals: bool = True  # postgresql: also pg_dumpall --globals-only
    uri_file: str | None = None  # mongodb: file holding the connection URI
    path: str | None = None  # sqlite: the database file
    command: list[str] = field(default_factory=list)  # command: argv, stdout = data
    filename: str | None = None  # command: the file name in the save (default NAME)
    env: dict[str, str] = field(default_factory=dict)
    env_file: str | None = None  # KEY=VALUE lines added to the dump's environment
    extra_args: list[str] = field(default_factory=list)  # appended to the dump command
    # Run the dump tools as this OS user (needs root), e.g. "postgres": Debian's
    # PostgreSQL lets only that user in over the local socket (peer authentication).
    run_as: str | None = None
    retention: Retention | None = None  # replaces the config's [retention] for this dump


@dataclass
class Schedule:
    time: str = "22:00"  # HH:MM, local time
    randomized_delay: str = "30m"  # systemd RandomizedDelaySec syntax: 30m, 1h, 90s
    enabled: bool = True


@dataclass
class Drill:
    """`ketch drill`: restore a sample of each set's latest save, load each dump."""

    schedule: str = "Sun 04:00"  # [DAY[,DAY...]] HH:MM, local time; no day: daily
    sample: int = 100  # files restored per set
    enabled: bool = True  # whether `ketch schedule install` installs the drill

    @property
    def scheduled(self) -> str | None:
        """The schedule `ketch schedule install` writes for the drill, or None."""
        return self.schedule if self.enabled else None


@dataclass
class EmailSettings:
    smtp_host: str
    to: list[str]
    sender: str = "ketch@localhost"  # TOML key: from
    smtp_port: int = 25
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password_file: str | None = None


@dataclass
class Notify:
    # healthchecks.io style: GET/POST URL/start, URL (success), URL/fail
    ping_url: str | None = None
    on_success: bool = False  # also email on success (pings always report success)
    email: EmailSettings | None = None
    timeout: float = 10.0


@dataclass
class Config:
    repository: str
    sets: list[BackupSet] = field(default_factory=list)
    dumps: list[DumpSpec] = field(default_factory=list)
    schedule: Schedule = field(default_factory=Schedule)
    notify: Notify = field(default_factory=Notify)
    drill: Drill = field(default_factory=Drill)
    log_file: str | None = None
    lock_file: str | None = None  # default: next to the config's repository cache
    compress: int = 1
    par2: bool = False  # parity files for each new pack (save --par2), and gc's
    retention: Retention | None = None  # [retention]: every set's and dump's, unless its own
    # For a repository in a bucket: an S3-compatible server's endpoint (AWS's by
    # default), and the key file of an encrypted one (cron has no environment).
    s3_endpoint: str | None = None
    encrypt_key: str | None = None
    encrypt_key_copy: str | None = None  # where its second copy is (jobs.keycopy)
    source: str = ""  # the file this was loaded from

    def retention_of(self, item: BackupSet | DumpSpec) -> Retention | None:
        """The retention table that applies to a set or dump: its own, else the config's."""
        return item.retention if item.retention is not None else self.retention
