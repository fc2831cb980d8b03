"""Writing a config: `render_config` gives TOML that the loader
(ketch.jobs.config) reads back to an equal Config, commented so that the file
documents itself.
"""

from __future__ import annotations

import dataclasses

from ketch.jobs.config import DUMP_KEYS
from ketch.jobs.configscan import BARE_KEY, toml_str
from ketch.jobs.model import Config, Notify, Retention

_HEADER = """\
ketch backup configuration: what this machine backs up, where to, and when.
Check it with `ketch config check`; run it with `ketch run`.
Paths must be absolute (ketch runs from systemd or cron, whose working directory is /).
Credential files (options_file, passfile, uri_file, env_file, password_file) should
be readable by root only: chmod 600."""

# key -> (example value, what it does): shown next to set keys, and commented out
# in place of unset ones, so the file documents itself.
_HINTS: dict[str, dict[str, tuple[str, str]]] = {
    "top": {
        "log_file": ('"/var/log/ketch/ketch.log"', "each run's report is appended here"),
        "lock_file": ('"/run/lock/ketch.lock"', "stops two runs from overlapping"),
        "compress": ("1", "zlib level of new objects: 0 (fastest) to 9 (smallest)"),
        "par2": ("true", "par2 recovery data for each new pack (about 10% more space)"),
    },
    "set": {
        "paths": ('["/etc"]', "absolute paths, saved together"),
        "exclude": ('["*.tmp", "/home/*/.cache"]', "globs: a name anywhere, or an absolute path"),
        "exclude_from": ('["/etc/ketch/excludes"]', "files of globs, one per line"),
        "exclude_rx": ("['^/var/cache/']", "regular expressions searched in the path"),
        "exclude_if_present": ('[".nobackup"]', "skip directories holding this file"),
        "one_file_system": ("true", "don't cross into other mounted filesystems"),
    },
    "dump": {
        "databases": ('["app"]', "which databases; absent = all of them"),
        "host": ('"localhost"', "host name, or the unix socket's directory"),
        "options_file": ('"/etc/ketch/mysql.cnf"', "[client] user=… password=… (chmod 600)"),
        "passfile": ('"/etc/ketch/pgpass"', "host:port:db:user:password lines (chmod 600)"),
        "uri_file": ('"/etc/ketch/mongodb.uri"', "mongodb://user:password@host/ (chmod 600)"),
        "filename": ('"data.bin"', "the file's name in the save (default: the dump's name)"),
        "env_file": ('"/etc/ketch/dump.env"', "KEY=VALUE lines for the dump's environment"),
        "run_as": ('"postgres"', "run the dump tools as this user (ketch runs as root)"),
    },
    "schedule": {
        "time": ('"22:00"', "local time, HH:MM"),
        "randomized_delay": ('"30m"', "random delay, so servers don't all start at once"),
        "enabled": ("false", "`ketch schedule install` then installs no timer"),
    },
    "drill": {
        "schedule": ('"Sun 04:00"', "when `ketch drill` runs: [DAY[,DAY...]] HH:MM; no day: daily"),
        "sample": ("100", "files of each set's latest save restored and checked"),
        "enabled": ("false", "`ketch schedule install` then installs no drill"),
    },
    "notify": {
        "ping_url": ('"https://hc-ping.com/YOUR-UUID"', "GET URL/start, URL on success, URL/fail"),
        "on_success": ("true", "email on success too (pings always report success)"),
        "timeout": ("10.0", "seconds to wait for the ping or the mail server"),
    },
    "email": {"from": ('"ketch@example.com"', "sender address"),
              "password_file": ('"/etc/ketch/smtp-password"', "with username (chmod 600)")},
}

_DUMP_NOTES = {
    "mysql": "MySQL/MariaDB: mysqldump --single-transaction, one file per database.",
    "postgresql": "PostgreSQL: pg_dump per database, plus pg_dumpall --globals-only.",
    "mongodb": "MongoDB: mongodump --archive.",
    "sqlite": "SQLite: a consistent copy through SQLite's online backup API.",
    "command": "Any command: its standard output is saved (a non-zero exit fails the run).",
}

_SET_EXAMPLE = """\
[[set]]
name = "etc"          # the branch: `ketch restore -C /tmp/out etc/latest/etc/nginx`
paths = ["/etc"]"""

_DUMP_EXAMPLE = """\
Database dumps stream into the repository, one save per run on branch NAME:
[[dump]]
name = "mysql"
type = "mysql"        # mysql, postgresql, mongodb, sqlite or command
options_file = "/etc/ketch/mysql.cnf"

[[dump]]
name = "app-db"
type = "sqlite"
path = "/var/lib/app/app.db\""""

_RETENTION_NOTE = """\
How long saves are kept: after its saves, `ketch run` removes from each branch
the saves no keep-* key keeps (the newest is always kept; see `ketch prune`).
A set or dump may have its own [set.retention] / [dump.retention] table after
its [[set]] / [[dump]]: it replaces this one; an empty table keeps every save.
On a backup server reached with an append-only key, the server prunes instead."""

_RETENTION_EXAMPLE = """\
[retention]
keep-daily = 7        # the newest save of each of the last 7 days that have one
keep-weekly = 4
keep-monthly = 6
keep-within = "2d"    # and every save of the last 2 days"""

_EMAIL_EXAMPLE = """\
[notify.email]
smtp_host = "mail.example.com"
to = ["admin@example.com"]
from = "ketch@example.com"
smtp_port = 587
starttls = true
username = "ketch"
password_file = "/etc/ketch/smtp-password\""""


def _toml_value(v: object, indent: str = "") -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, dict):
        pairs = ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items())
        return "{ " + pairs + " }" if pairs else "{}"
    assert isinstance(v, list), v
    items = [_toml_value(x) for x in v]
    if sum(len(x) + 2 for x in items) > 72 and len(items) > 1:
        return "[\n" + "".join(f"{indent}    {x},\n" for x in items) + "]"
    return "[" + ", ".join(items) + "]"


def _toml_key(k: str) -> str:
    return k if BARE_KEY.fullmatch(k) else toml_str(k)


def _emit(out: list[str], obj: object, section: str, comments: bool, *,
          hint_only: tuple[str, ...] | None = None, always: tuple[str, ...] = (),
          skip: tuple[str, ...] = ("email",)) -> None:
    """`key = value` for every field that differs from its default (so the text loads
    back to an equal object); with comments, examples for the rest."""
    hints = _HINTS.get(section, {}) if comments else {}
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if f.name in skip:
            continue
        key = "from" if f.name == "sender" else f.name
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            default: object = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING  # a required field: always written
        hint = hints.get(key)
        if value == default and key not in always:
            if hint and (hint_only is None or key in hint_only):
                out.append(f"# {key} = {hint[0]}  # {hint[1]}")
            continue
        line = f"{key} = {_toml_value(value)}"
        out.append(f"{line}  # {hint[1]}" if hint and "\n" not in line else line)


def _retention(out: list[str], header: str, table: Retention | None) -> None:
    """The table, after the keys of the [[set]] or [[dump]] it belongs to."""
    if table is not None:
        out.append(f"[{header}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())


def _drill(out: list[str], cfg: Config, comments: bool) -> None:
    out.append("")
    if comments:
        out += ["# The restore drill (`ketch drill`): restores a sample of every set and loads",
                "# every dump into a throwaway server; a failure notifies as a run does."]
    out.append("[drill]")
    _emit(out, cfg.drill, "drill", comments, always=("schedule", "sample"))


def render_config(cfg: Config, *, comments: bool = True) -> str:
    """TOML that `parse_config` reads back to a Config equal to `cfg` (but `source`)."""
    out: list[str] = []

    def note(text: str) -> None:
        if comments:
            out.extend(f"# {ln}".rstrip() for ln in text.splitlines())

    note(_HEADER)
    if comments:
        out.append("")
    note("Where backups go: a local directory, or a backup server over ssh\n"
         "(ssh://backup@server/srv/ketch/HOST or backup@server:/srv/ketch/HOST).")
    out.append(f"repository = {toml_str(cfg.repository)}")
    # The tables are written below: TOML puts a table's keys after its header.
    _emit(out, cfg, "top", comments,
          skip=("repository", "sets", "dumps", "schedule", "notify", "source", "retention",
                "drill"))
    if cfg.retention is not None or comments:
        out.append("")
        note(_RETENTION_NOTE)
        if cfg.retention is None:
            note(_RETENTION_EXAMPLE)
        _retention(out, "retention", cfg.retention)
    if not cfg.sets and comments:
        out.append("")
        note(_SET_EXAMPLE)
    for n, s in enumerate(cfg.sets):
        out.append("")
        if n == 0:
            note("A backup set: these paths are saved together, on a branch named `name`.")
        out.append("[[set]]")
        _emit(out, s, "set", comments and n == 0, skip=("retention",))
        _retention(out, "set.retention", s.retention)
    for d in cfg.dumps:
        out.append("")
        note(_DUMP_NOTES.get(d.type, ""))
        out.append("[[dump]]")
        _emit(out, d, "dump", comments, hint_only=DUMP_KEYS.get(d.type, ()),
              skip=("retention",))
        _retention(out, "dump.retention", d.retention)
    if not cfg.dumps and comments:
        out.append("")
        note(_DUMP_EXAMPLE)
    out.append("")
    note("When `ketch schedule install` runs it: daily.")
    out.append("[schedule]")
    _emit(out, cfg.schedule, "schedule", comments, always=("time", "randomized_delay"))
    _drill(out, cfg, comments)
    if comments or cfg.notify != Notify():
        out.append("")
        note("Who hears about failures (and, with on_success, about every run).")
        out.append("[notify]")
        _emit(out, cfg.notify, "notify", comments)
        if cfg.notify.email is not None:
            out.append("[notify.email]")
            _emit(out, cfg.notify.email, "email", comments)
        elif comments:
            note(_EMAIL_EXAMPLE)
    return "\n".join(out) + "\n"
