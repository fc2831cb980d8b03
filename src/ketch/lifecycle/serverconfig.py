"""The backup server's config: how long each machine's saves are kept there,
and when the nightly prune + gc runs. Machines save through append-only keys,
which cannot remove a save, so on a backup server retention is the server's.

    root = "/srv/ketch"     # the repositories, one directory per machine
    [retention]             # every machine without a table of its own
    keep-daily = 7
    keep-weekly = 4
    keep-monthly = 6
    [machine.web1]          # the repository ROOT/web1: replaces [retention]
    keep-daily = 30
    [machine.archive]       # an empty table: every save is kept
    [gc]
    threshold = 10          # rewrite packs holding more than 10% garbage
    [schedule]
    time = "06:00"          # local time of `ketch schedule install --server`'s job
    [mirror]                # the S3 mirror's key, for `ketch config check --server`
    encrypt_key = "/root/ketch-mirror.key"
    key_copy = "printed, in the office safe"   # or a path: checked to match

Read from $KETCH_SERVER_CONFIG, else /etc/ketch/server.toml. The same
`[retention]` keys are the machine config's (`retention_problems` checks both).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from ketch.errors import UsageError
from ketch.lifecycle.policy import KeepPolicy

DEFAULT_SERVER_CONFIG = "/etc/ketch/server.toml"
DEFAULT_TIME = "06:00"
DEFAULT_THRESHOLD = 10.0
# The keys of a retention table: the names of `ketch prune`'s options.
RETENTION_KEYS = ("keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly",
                  "keep-yearly", "keep-within")
_TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d\Z")
_TOP = ("root", "retention", "machine", "gc", "schedule", "mirror")
_MIRROR = ("encrypt_key", "key_copy")


def default_server_config_path() -> str:
    return os.environ.get("KETCH_SERVER_CONFIG") or DEFAULT_SERVER_CONFIG


def _type_name(v: object) -> str:
    for t, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"),
                    (str, "a string"), (list, "an array"), (dict, "a table")):
        if isinstance(v, t):
            return name
    return "a date/time"


def unknown_key(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return "unknown key " + (f"(did you mean '{close[0]}'?)" if close
                             else f"(expected one of {', '.join(known)})")


def retention_problems(table: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for each bad key or value of a retention table."""
    out: list[tuple[str, str]] = []
    for key, value in table.items():
        if key not in RETENTION_KEYS:
            out.append((key, unknown_key(key, RETENTION_KEYS)))
        elif key == "keep-within":
            if not isinstance(value, str):
                out.append((key, f"expected a duration such as \"30d\", got {_type_name(value)}"))
        elif not isinstance(value, int) or isinstance(value, bool):
            out.append((key, f"expected an integer, got {_type_name(value)}"))
        elif value < 0:
            out.append((key, f"expected 0 or more, got {value}"))
    bad = {key for key, _ in out}
    for key, value in table.items():
        if key in bad:
            continue
        try:  # the policy's own parser has the last word (durations)
            KeepPolicy.from_mapping({key: value})
        except UsageError as e:
            # Its message may name the key (or the option) already: the caller does.
            msg = re.sub(rf"^(--)?{key}:?\s*", "", str(e))
            out.append((key, msg))
    return out


def policy_of(table: dict[str, Any]) -> KeepPolicy:
    """The policy a (valid) retention table gives."""
    return KeepPolicy.from_mapping(table)


class ServerConfigError(UsageError):
    """The server config is missing, unparsable or invalid; one line per problem."""


@dataclass
class ServerConfig:
    source: str = ""
    root: str | None = None
    default: KeepPolicy | None = None  # [retention]; None: machines without a table are skipped
    machines: dict[str, KeepPolicy] = field(default_factory=dict)
    gc_threshold: float = DEFAULT_THRESHOLD
    time: str = DEFAULT_TIME
    mirror_key: str | None = None  # [mirror] encrypt_key
    mirror_key_copy: str | None = None  # [mirror] key_copy: where its second copy is

    def policy_for(self, machine: str) -> KeepPolicy | None:
        """The machine's policy; None when the config has none for it."""
        return self.machines.get(machine, self.default)


def _table(v: Any, key: str, problems: list[tuple[str, str]]) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    problems.append((key, f"expected a table, got {_type_name(v)}"))
    return {}


def _policy(raw: dict[str, Any], key: str, problems: list[tuple[str, str]]) -> KeepPolicy | None:
    bad = retention_problems(raw)
    problems.extend((f"{key}.{k}", msg) for k, msg in bad)
    return None if bad else policy_of(raw)


def _machines(raw: dict[str, Any], cfg: ServerConfig, problems: list[tuple[str, str]]) -> None:
    for name, table in raw.items():
        key = f"machine.{name}" if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'machine."{name}"'
        if not name or "/" in name or name in (".", ".."):
            problems.append((key, "not a repository directory name under root"))
        policy = _policy(_table(table, key, problems), key, problems)
        if policy is not None:
            cfg.machines[name] = policy


def _mirror(raw: dict[str, Any], cfg: ServerConfig, problems: list[tuple[str, str]]) -> None:
    for key, v in raw.items():
        if key not in _MIRROR:
            problems.append((f"mirror.{key}", unknown_key(key, _MIRROR)))
        elif not isinstance(v, str) or not v or (key == "encrypt_key" and not os.path.isabs(v)):
            want = "an absolute path" if key == "encrypt_key" else "a string"
            problems.append((f"mirror.{key}", f"expected {want}, got {v!r}"))
        elif key == "encrypt_key":
            cfg.mirror_key = v
        else:
            cfg.mirror_key_copy = v


def parse_server_config(text: str, source: str) -> ServerConfig:
    """A ServerConfig; ServerConfigError naming the file and each bad key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ServerConfigError(f"{source}: TOML syntax error: {e}") from None
    cfg = ServerConfig(source=source)
    problems: list[tuple[str, str]] = []
    for key in data:
        if key not in _TOP:
            problems.append((key, unknown_key(key, _TOP)))
    root = data.get("root")
    if root is not None:
        if not isinstance(root, str) or not os.path.isabs(root):
            problems.append(("root", f"expected an absolute path, got {root!r}"))
        else:
            cfg.root = root
    if "retention" in data:
        cfg.default = _policy(_table(data["retention"], "retention", problems), "retention",
                              problems)
    _machines(_table(data.get("machine", {}), "machine", problems), cfg, problems)
    gc = _table(data.get("gc", {}), "gc", problems)
    for key, v in gc.items():
        if key != "threshold":
            problems.append((f"gc.{key}", unknown_key(key, ("threshold",))))
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and 0 <= v <= 100):
            problems.append(("gc.threshold", f"expected a percentage 0-100, got {v!r}"))
        else:
            cfg.gc_threshold = float(v)
    sched = _table(data.get("schedule", {}), "schedule", problems)
    for key, v in sched.items():
        if key != "time":
            problems.append((f"schedule.{key}", unknown_key(key, ("time",))))
        elif not isinstance(v, str) or not _TIME.match(v):
            problems.append(("schedule.time", f"expected HH:MM (24-hour local time, e.g. "
                                              f"\"06:00\"), got {v!r}"))
        else:
            cfg.time = v
    _mirror(_table(data.get("mirror", {}), "mirror", problems), cfg, problems)
    if problems:
        raise ServerConfigError("\n".join(f"{source}: {k}: {m}" for k, m in problems))
    return cfg


def load_server_config(path: str | None = None) -> ServerConfig:
    """The server config at `path` (default: $KETCH_SERVER_CONFIG, else
    /etc/ketch/server.toml)."""
    path = path or default_server_config_path()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ServerConfigError(f"{path}: no such file (the backup server's retention: see "
                                "\"Retention on the backup server\" in the README)") from None
    except OSError as e:
        raise ServerConfigError(f"{path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ServerConfigError(f"{path}: not UTF-8 text") from None
    return parse_server_config(text, path)
