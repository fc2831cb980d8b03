"""The config file's reference (`ketch help config`), built from the loader's
schema (ketch.jobs.config) and the model's defaults (ketch.jobs.model), so a key
added there shows up here; only the one-line meanings the config writer does not
already carry are written below."""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from ketch.jobs import config as schema
from ketch.jobs import configwrite
from ketch.jobs.model import (
    DEFAULT_CONFIG,
    DUMP_TYPES,
    BackupSet,
    Config,
    Drill,
    DumpSpec,
    EmailSettings,
    Notify,
)
from ketch.jobs.model import Schedule as ScheduleModel

# section -> key -> meaning, for keys `ketch config init` writes no hint for.
MEANINGS: dict[str, dict[str, str]] = {
    "top": {
        "repository": "where backups go: a local directory (absolute path), a backup server "
                      "(ssh://USER@HOST[:PORT]/PATH or USER@HOST:PATH; HOST: alone is the "
                      "repository the server's key allows), or a bucket: s3://BUCKET/PREFIX/REPO "
                      "(made with ketch init -r). Commands given no -d/-r (and no $KETCH_DIR) "
                      "use it too",
        "s3_endpoint": "for a repository in a bucket on an S3-compatible server (Ceph RGW, "
                       "SeaweedFS, MinIO): its endpoint URL; AWS S3 needs none. Credentials "
                       "come from the environment, ~/.aws or the instance role",
        "encrypt_key": "for an encrypted repository in a bucket: the key file (ketch mirror "
                       "keygen)",
        "encrypt_key_copy": "where the key's second copy is kept, away from this machine: a "
                            "path (checked to hold the same key) or words (\"printed, in the "
                            "safe\"); without it `ketch config check` warns",
        "retention": "how long saves are kept: the [retention] table (below), for every set "
                     "and dump without one of its own",
        "set": "the backup sets, as [[set]] tables (below)",
        "dump": "the database dumps, as [[dump]] tables (below)",
        "schedule": "when `ketch schedule install` runs `ketch run` (below)",
        "notify": "who hears about failures (below)",
        "drill": "the restore drill, `ketch drill` (below)",
        "par2": "make par2 recovery data (bup's fsck -g layout) for every pack the run's "
                "saves and gc write, so that `ketch fsck --repair` can mend a damaged one; "
                "about 10% more space. Over ssh the server makes it (par2 installed there)",
    },
    "set": {
        "name": "the branch each run adds a save to (ketch ls NAME)",
        "retention": "this set's own [set.retention] table (after its [[set]] keys): "
                     "replaces [retention]; empty: every save is kept",
    },
    "dump": {
        "name": "the branch each run adds a save to; the save holds one file per database",
        "type": "what to dump: " + ", ".join(DUMP_TYPES),
        "port": "TCP port of the database server",
        "user": "database user to connect as (read-only privileges are enough to dump; "
                "restoring needs one that may write)",
        "globals": "postgresql: also save roles and tablespaces (pg_dumpall --globals-only) "
                   "as globals.sql",
        "path": "sqlite: the database file",
        "command": "command: the program and its arguments (no shell); its standard output "
                   "is saved",
        "env": "variables for the dump's environment, as a table: { PGSSLMODE = \"require\" }",
        "extra_args": "arguments appended to the dump tool's command line",
        "retention": "this dump's own [dump.retention] table (after its [[dump]] keys): "
                     "replaces [retention]; empty: every save is kept",
    },
    "retention": {
        "keep-last": "the N newest saves",
        "keep-hourly": "the newest save of each of the N most recent hours that have one",
        "keep-daily": "the same for days",
        "keep-weekly": "the same for weeks",
        "keep-monthly": "the same for months",
        "keep-yearly": "the same for years",
        "keep-within": "every save younger than this: \"12h\", \"30d\", \"2w\", \"6m\", "
                       "\"1y\"",
    },
    "schedule": {
        "time": "local time, HH:MM, at which the daily run starts",
        "enabled": "false: `ketch schedule install` installs no timer",
    },
    "notify": {
        "email": "mail settings, as the [notify.email] table (below)",
    },
    "email": {
        "smtp_host": "mail server to send through",
        "to": "recipients",
        "smtp_port": "mail server port",
        "starttls": "upgrade the connection with STARTTLS",
        "ssl": "connect with TLS from the start (usually port 465)",
        "username": "SMTP login (its password in password_file)",
    },
}

# (section name in MEANINGS and configwrite._HINTS, heading, loader schema, model class, intro)
_SECTIONS: list[tuple[str, str, dict[str, str], type, str]] = [
    ("top", "Top level", schema._TOP, Config, ""),
    ("set", "[[set]]", schema._SET, BackupSet,
     "A backup set: these paths are saved together, one save per run."),
    ("dump", "[[dump]]", schema._DUMP, DumpSpec,
     "A database dump streamed into the repository, one save per run."),
    ("retention", "[retention]", schema.RETENTION_SCHEMA, Config,
     "Saves `ketch run` keeps: the newest, and each one a key keeps."),
    ("schedule", "[schedule]", schema._SCHEDULE, ScheduleModel, "When it runs: daily."),
    ("drill", "[drill]", schema._DRILL, Drill,
     "The restore drill (`ketch drill`): a sample of each set restored and compared, each "
     "dump loaded into a throwaway server; weekly, beside the nightly run."),
    ("notify", "[notify]", schema._NOTIFY, Notify, "Who hears about a run."),
    ("email", "[notify.email]", schema._EMAIL, EmailSettings,
     "Mail on failures and warnings (every run with on_success = true)."),
]

_MODEL_FIELD = {"set": "sets", "dump": "dumps", "from": "sender"}


def meaning(section: str, key: str) -> str | None:
    hint = configwrite._HINTS.get(section, {}).get(key)
    return MEANINGS.get(section, {}).get(key) or (hint[1] if hint else None)


def _default(model: type, key: str) -> tuple[bool, Any]:
    """(required, default) of `key` as the model holds it."""
    name = _MODEL_FIELD.get(key, key)
    for f in dataclasses.fields(model):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return False, f.default
            if f.default_factory is not dataclasses.MISSING:
                return False, f.default_factory()
            return True, None
    return False, None


def _shown_default(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return ""
    if isinstance(value, bool):
        return f" (default: {'true' if value else 'false'})"
    if isinstance(value, str):
        return f' (default: "{value}")'
    if isinstance(value, (int, float)):
        return f" (default: {value})"
    return ""


def config_reference() -> str:
    from ketch.jobs.config import default_config_path

    out = textwrap.wrap(
        f"ketch.toml: what this machine backs up, where to, and when. Read from "
        f"$KETCH_CONFIG, else {DEFAULT_CONFIG} (here: {default_config_path()}). "
        "Write one with `ketch config init`, check it with `ketch config check`. "
        "Every path must be absolute (ketch runs from systemd or cron, in /); credential "
        "files should be readable by root only (chmod 600).", 80)
    users = {k: [t for t, keys in schema.DUMP_KEYS.items() if k in keys]
             for k in schema._DUMP}
    for section, heading, keys, model, intro in _SECTIONS:
        out += ["", heading + (f"  {intro}" if intro else "")]
        for key, kind in keys.items():
            required, default = _default(model, key)
            what = schema._WANT.get(kind, "a list of tables" if kind == "tables" else kind)
            if kind in ("abspath", "abspaths"):
                what += " (absolute paths)" if kind == "abspaths" else " (an absolute path)"
            line = f"  {key}: {what}"
            line += ", required" if required else _shown_default(default)
            if section == "dump" and key not in schema.DUMP_COMMON:
                line += f"; for {', '.join(users[key]) or 'no type'}"
            out.append(line)
            text = meaning(section, key)
            if text:
                out += textwrap.wrap(text, 78, initial_indent=" " * 6,
                                     subsequent_indent=" " * 6)
    return "\n".join(out) + "\n"
