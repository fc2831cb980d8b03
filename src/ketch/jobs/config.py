"""The machine's TOML config: load it into `model.Config` with errors that name
the file, the line (found by `configscan`) and the key; and check that what it
names is there (`check_config`, for `ketch config check`: it lives in
`configcheck` and is re-exported here).  Writing one back is `configwrite`'s.

Rules the loader enforces, so that a nightly run never finds them out:
- every key is known (a typo such as `pahts` is an error, with a suggestion);
- every file path is absolute: ketch runs from systemd or cron, whose working
  directory is `/`, so a relative path would mean something else there than
  where it was written (a local repository must be absolute too);
- set and dump names are valid branch names and unique: each is a branch;
- a dump has only the keys its type uses (`passfile` on a mysql dump is a
  mistake, not a no-op).
Positions in messages count from 1, as the file does: `dump[1]` is the first
`[[dump]]` table, `paths[2]` the second path.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ketch.errors import UsageError
from ketch.git.refs import BadRefName, validate_branch_name
from ketch.jobs.configcheck import CheckResult as CheckResult
from ketch.jobs.configcheck import check_config as check_config
from ketch.jobs.configsave import CONFIG_SET
from ketch.jobs.configscan import BARE_KEY, KeyLines, Path, toml_str
from ketch.jobs.model import (
    DUMP_TYPES,
    BackupSet,
    Config,
    Drill,
    DumpSpec,
    EmailSettings,
    Notify,
    Schedule,
)
from ketch.jobs.model import default_config_path as default_config_path
from ketch.lifecycle.serverconfig import RETENTION_KEYS, retention_problems
from ketch.remote.location import is_remote
from ketch.remote.spec import parse_remote


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None  # None: the file as a whole (unreadable, missing)
    key: str  # "" for syntax errors
    message: str

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(UsageError):
    """The config file is missing, unparsable or invalid; one line per issue."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(map(str, issues)))
        self.issues = issues


# -- validation ------------------------------------------------------------------

# "str" must not be empty; "text", an item of "strs", may be (a command's argument)
_STR, _TEXT, _INT, _NUM, _BOOL, _STRS, _ABS, _ABSS, _ENV, _TABLE, _TABLES, _RET = (
    "str", "text", "int", "number", "bool", "strs", "abspath", "abspaths", "env", "table",
    "tables", "retention")

_TOP = {"repository": _STR, "s3_endpoint": _STR, "encrypt_key": _ABS,
        "encrypt_key_copy": _STR, "log_file": _ABS, "lock_file": _ABS, "compress": _INT,
        "par2": _BOOL, "retention": _RET, "set": _TABLES, "dump": _TABLES, "schedule": _TABLE,
        "notify": _TABLE, "drill": _TABLE}
_SET = {"name": _STR, "paths": _ABSS, "exclude": _STRS, "exclude_from": _ABSS,
        "exclude_rx": _STRS, "exclude_if_present": _STRS, "one_file_system": _BOOL,
        "retention": _RET}
_DUMP = {"name": _STR, "type": _STR, "databases": _STRS, "host": _STR, "port": _INT,
         "user": _STR, "options_file": _ABS, "passfile": _ABS, "globals": _BOOL,
         "uri_file": _ABS, "path": _ABS, "command": _STRS, "filename": _STR, "env": _ENV,
         "env_file": _ABS, "extra_args": _STRS, "run_as": _STR, "retention": _RET}
# A [retention] table's keys (the `ketch prune` options'), for the reference.
RETENTION_SCHEMA = {key: _STR if key == "keep-within" else _INT for key in RETENTION_KEYS}
_SCHEDULE = {"time": _STR, "randomized_delay": _STR, "enabled": _BOOL}
_DRILL = {"schedule": _STR, "sample": _INT, "enabled": _BOOL}
_NOTIFY = {"ping_url": _STR, "on_success": _BOOL, "email": _TABLE, "timeout": _NUM}
_EMAIL = {"smtp_host": _STR, "to": _STRS, "from": _STR, "smtp_port": _INT, "starttls": _BOOL,
          "ssl": _BOOL, "username": _STR, "password_file": _ABS}

_WANT = {_STR: "a string", _TEXT: "a string", _ABS: "a string", _INT: "an integer",
         _NUM: "a number", _BOOL: "a boolean (true or false)", _TABLE: "a table", _ENV: "a table",
         _RET: "a table",
         _STRS: "an array of strings", _ABSS: "an array of strings"}
_PY_TYPE: dict[str, type | tuple[type, ...]] = {
    _STR: str, _TEXT: str, _ABS: str, _INT: int, _NUM: (int, float), _BOOL: bool,
    _TABLE: dict, _ENV: dict, _RET: dict, _STRS: list, _ABSS: list, _TABLES: list}

_SERVER_KEYS = ("databases", "host", "port", "user", "env", "env_file", "extra_args", "run_as")
# The keys each dump type reads, besides name and type.
DUMP_KEYS: dict[str, tuple[str, ...]] = {
    "mysql": (*_SERVER_KEYS, "options_file"),
    "postgresql": (*_SERVER_KEYS, "passfile", "globals"),
    "mongodb": (*_SERVER_KEYS, "uri_file"),
    "sqlite": ("path",),  # Python's sqlite3 backup API: no process, no environment
    "command": ("command", "filename", "env", "env_file", "extra_args", "run_as"),
}

# The keys every dump type takes.
DUMP_COMMON = ("name", "type", "retention")

_TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def is_valid_time(text: str) -> bool:
    """`HH:MM`, 24-hour: what [schedule] time accepts."""
    return _TIME.match(text) is not None


def _has_kind(v: object, kind: str) -> bool:
    # bool is an int subclass in Python, but `port = true` is no port
    return isinstance(v, _PY_TYPE[kind]) and not (isinstance(v, bool) and kind in (_INT, _NUM))


def _toml_type(v: object) -> str:
    for t, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"),
                    (str, "a string"), (list, "an array"), (dict, "a table")):
        if isinstance(v, t):
            return name
    return "a date/time"


def _show(path: Path) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p + 1}]"
        else:
            name = p if BARE_KEY.fullmatch(p) else f'"{p}"'
            out += f".{name}" if out else name
    return out


def _abs_problem(p: str) -> str | None:
    if not p:
        return "must not be empty"
    if not os.path.isabs(p):
        return (f"{p!r} is not an absolute path (ketch runs from systemd or cron, "
                "whose working directory is /)")
    return None


class _Loader:
    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text
        self._lines: dict[Path, int] | None = None
        self.issues: list[ConfigIssue] = []

    def line_of(self, path: Path) -> int:
        if self._lines is None:
            try:
                self._lines = KeyLines(self.text).lines
            except (ValueError, IndexError):  # a scanner bug must not hide the message
                self._lines = {}
        for n in range(len(path), 0, -1):
            if path[:n] in self._lines:
                return self._lines[path[:n]]
        return 1

    def error(self, path: Path, message: str) -> None:
        self.issues.append(ConfigIssue(self.source, self.line_of(path), _show(path), message))

    def _convert(self, kind: str, v: Any, path: Path) -> tuple[bool, Any]:
        if not _has_kind(v, kind):
            want = f"[[{_show(path)}]] tables" if kind == _TABLES else _WANT[kind]
            hint = f" (write [{toml_str(v)}])" if kind in (_STRS, _ABSS) and isinstance(v, str) \
                else ""
            self.error(path, f"expected {want}, got {_toml_type(v)}{hint}")
            return False, None
        good = True
        if kind in (_STR, _ABS) and not v:
            self.error(path, "must not be empty")
            good = False
        elif kind == _ABS and (problem := _abs_problem(v)):
            self.error(path, problem)
            good = False
        elif kind in (_STRS, _ABSS, _TABLES):
            item_kind = {_STRS: _TEXT, _ABSS: _ABS, _TABLES: _TABLE}[kind]
            for n, item in enumerate(v):
                good = self._convert(item_kind, item, path + (n,))[0] and good
        elif kind == _ENV:
            for key, val in v.items():
                if not _ENV_NAME.match(key):
                    self.error(path + (key,), "not a valid environment variable name")
                    good = False
                if not isinstance(val, str):
                    self.error(path + (key,), f"expected a string, got {_toml_type(val)}")
                    good = False
        elif kind == _RET:
            for key, message in retention_problems(v):
                self.error(path + (key,), message)
                good = False
        return good, float(v) if kind == _NUM else v

    def table(self, data: dict[str, Any], schema: dict[str, str], path: Path,
              required: tuple[str, ...] = ()) -> dict[str, Any]:
        """The keys of `data` that are known and well typed, converted; errors for the rest."""
        out: dict[str, Any] = {}
        suggested = set()
        for key, value in data.items():
            kind = schema.get(key)
            if kind is None:
                close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)
                suggested.update(close)
                hint = f" (did you mean '{close[0]}'?)" if close else \
                    f" (expected one of {', '.join(schema)})"
                self.error(path + (key,), f"unknown key{hint}")
                continue
            good, converted = self._convert(kind, value, path + (key,))
            if good:
                out[key] = converted
        for key in required:
            if key not in data and key not in suggested:  # the typo's line says it already
                self.error(path + (key,), "required key is missing")
        return out

    def check_name(self, name: str, path: Path, seen: dict[str, Path]) -> None:
        try:
            validate_branch_name(name.encode())
        except BadRefName as e:
            why = re.sub(r"\bb(['\"])", r"\1", str(e).split(": ")[-1])  # b' ' -> ' '
            self.error(path, f"{name!r} is not usable as a branch name: {why}")
            return
        if name == CONFIG_SET:
            self.error(path, f"{name!r} is reserved: every run saves the config there")
            return
        if name in seen:
            other = seen[name]
            self.error(path, f"duplicate name {name!r} (also {_show(other)}, "
                             f"line {self.line_of(other)}; each name is its own branch)")
        seen[name] = path


def _build_set(ld: _Loader, raw: dict[str, Any], path: Path) -> BackupSet | None:
    v = ld.table(raw, _SET, path, required=("name", "paths"))
    if "paths" in v and not v["paths"]:
        ld.error(path + ("paths",), "lists no paths")
    for n, rx in enumerate(v.get("exclude_rx", [])):
        try:
            re.compile(rx)
        except re.error as e:
            ld.error(path + ("exclude_rx", n), f"bad regular expression: {e}")
    if "name" not in v or "paths" not in v:
        return None
    return BackupSet(**v)


def _build_dump(ld: _Loader, raw: dict[str, Any], path: Path) -> DumpSpec | None:
    v = ld.table(raw, _DUMP, path, required=("name", "type"))
    kind = v.get("type")
    if kind is not None and kind not in DUMP_TYPES:
        close = difflib.get_close_matches(kind, DUMP_TYPES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        ld.error(path + ("type",), f"unknown dump type {kind!r} ({hint}expected one of "
                                   f"{', '.join(DUMP_TYPES)})")
        return None
    if kind is None:
        return None
    for key in v:
        if key not in DUMP_COMMON and key not in DUMP_KEYS[kind]:
            users = [t for t, keys in DUMP_KEYS.items() if key in keys]
            ld.error(path + (key,), f"not used by {kind} dumps (only by {', '.join(users)})")
    required = {"sqlite": "path", "command": "command"}.get(kind)
    if required is not None and not v.get(required):
        ld.error(path + (required,), f"a {kind} dump needs {required}"
                 + (" (the program and its arguments)" if kind == "command" else ""))
    if "port" in v and not 0 < v["port"] < 65536:
        ld.error(path + ("port",), f"port {v['port']} is out of range (1-65535)")
    for n, db in enumerate(v.get("databases", [])):
        if not db:
            ld.error(path + ("databases", n), "must not be empty")
    fn = v.get("filename")
    if fn is not None and ("/" in fn or fn in (".", "..")):
        ld.error(path + ("filename",), f"{fn!r} is not a plain file name")
    return DumpSpec(**v)


def _build_schedule(ld: _Loader, raw: dict[str, Any]) -> Schedule:
    v = ld.table(raw, _SCHEDULE, ("schedule",))
    if "time" in v and not _TIME.match(v["time"]):
        ld.error(("schedule", "time"), f"expected HH:MM (24-hour local time, e.g. \"22:00\"), "
                                       f"got {v['time']!r}")
    if "randomized_delay" in v:
        from ketch.jobs.schedule import parse_delay

        try:
            parse_delay(v["randomized_delay"])
        except UsageError:
            ld.error(("schedule", "randomized_delay"),
                     f"expected a duration such as \"30m\", \"1h\", \"90s\" or \"0\", "
                     f"got {v['randomized_delay']!r}")
    return Schedule(**v)


def _build_drill(ld: _Loader, raw: dict[str, Any]) -> Drill:
    from ketch.jobs.drillschedule import parse_drill_schedule

    v = ld.table(raw, _DRILL, ("drill",))
    if "schedule" in v:
        try:
            parse_drill_schedule(v["schedule"])
        except UsageError:
            ld.error(("drill", "schedule"), f"expected [DAY[,DAY...]] HH:MM (e.g. \"Sun 04:00\"; "
                                            f"no day: daily), got {v['schedule']!r}")
    if "sample" in v and v["sample"] < 1:
        ld.error(("drill", "sample"), f"expected a number of files, at least 1, got {v['sample']}")
    return Drill(**v)


def _build_notify(ld: _Loader, raw: dict[str, Any]) -> Notify:
    v = ld.table(raw, _NOTIFY, ("notify",))
    url = v.get("ping_url")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            ld.error(("notify", "ping_url"), f"expected an http:// or https:// URL, got {url!r}")
    if "timeout" in v and not (math.isfinite(v["timeout"]) and v["timeout"] > 0):
        ld.error(("notify", "timeout"), "must be a positive number of seconds")
    email = None
    if "email" in v:
        path: Path = ("notify", "email")
        e = ld.table(v.pop("email"), _EMAIL, path, required=("smtp_host", "to"))
        if "to" in e and not e["to"]:
            ld.error(path + ("to",), "lists no recipients")
        for n, addr in enumerate(e.get("to", [])):
            if "@" not in addr:
                ld.error(path + ("to", n), f"{addr!r} is not an email address")
        if "from" in e and "@" not in e["from"]:
            ld.error(path + ("from",), f"{e['from']!r} is not an email address")
        if "smtp_port" in e and not 0 < e["smtp_port"] < 65536:
            ld.error(path + ("smtp_port",), f"port {e['smtp_port']} is out of range (1-65535)")
        if e.get("ssl") and e.get("starttls"):
            ld.error(path + ("ssl",), "ssl and starttls exclude each other (ssl: SMTPS, "
                                      "usually port 465; starttls: usually port 587)")
        if "smtp_host" in e and "to" in e:
            e["sender"] = e.pop("from", EmailSettings.sender)
            email = EmailSettings(**e)
    return Notify(**v, email=email)


def _build(ld: _Loader, data: dict[str, Any]) -> Config:
    top = ld.table(data, _TOP, (), required=("repository",))
    repo = top.get("repository", "")
    if repo:
        try:
            if is_remote(repo):
                parse_remote(repo)
            elif problem := _abs_problem(repo):
                ld.error(("repository",), problem + "; or a remote: ssh://USER@HOST/PATH")
        except UsageError as e:
            ld.error(("repository",), str(e))
    if "compress" in top and not 0 <= top["compress"] <= 9:
        ld.error(("compress",), f"expected a zlib level 0-9, got {top['compress']}")
    names: dict[str, Path] = {}
    built: dict[str, list[Any]] = {"set": [], "dump": []}
    for section, build in (("set", _build_set), ("dump", _build_dump)):
        for n, raw in enumerate(top.pop(section, [])):
            item = build(ld, raw, (section, n))
            if isinstance(raw.get("name"), str) and raw["name"]:
                ld.check_name(raw["name"], (section, n, "name"), names)
            if item is not None:
                built[section].append(item)
    schedule = _build_schedule(ld, top.pop("schedule", {}))
    notify = _build_notify(ld, top.pop("notify", {}))
    drill = _build_drill(ld, top.pop("drill", {}))
    top.setdefault("repository", "")  # missing: an issue already; the Config is dropped
    return Config(**top, sets=built["set"], dumps=built["dump"], schedule=schedule,
                  notify=notify, drill=drill)


def parse_config(text: str, source: str) -> Config:
    """A Config from TOML text; ConfigError listing every problem, each with its line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r" \(at line (\d+), column (\d+)\)$", msg)
        if m:
            line, msg = int(m.group(1)), f"{msg[:m.start()]} (column {m.group(2)})"
        else:  # "(at end of document)"
            line = text.count("\n") + 1
        raise ConfigError([ConfigIssue(source, line, "", f"TOML syntax error: {msg}")]) from None
    ld = _Loader(source, text)
    cfg = _build(ld, data)
    if ld.issues:
        raise ConfigError(sorted(ld.issues, key=lambda i: i.line or 0))
    cfg.source = source
    return cfg


def load_config(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(path, None, "", "no such file (write one with "
                                                       "'ketch config init')")]) from None
    except OSError as e:
        raise ConfigError([ConfigIssue(path, None, "", e.strerror or str(e))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError([ConfigIssue(path, line, "", "not UTF-8 text")]) from None
    return parse_config(text, path)
