"""The dump tools' environment and credentials: env and env_file, the user they
run as, where they are on PATH, and the secrets a dump knows of (scrubbed from
every message).
"""

from __future__ import annotations

import os
import pwd
import shutil
import urllib.parse

from ketch.jobs.dumpsave import DumpFailed
from ketch.jobs.model import DumpSpec


def read_env_file(path: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines, `#` comments and `export ` allowed; one level
    of matching quotes around VALUE is removed)."""
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DumpFailed(f"env_file {path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        s = s.removeprefix("export ").strip()
        key, sep, value = s.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise DumpFailed(f"env_file {path}: line {n}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key] = value
    return out


def base_env(spec: DumpSpec) -> dict[str, str]:
    """The dump tools' environment: ours, plus env_file, plus env."""
    env = dict(os.environ)
    if spec.env_file:
        env.update(read_env_file(spec.env_file))
    env.update(spec.env)
    return env


_SECRET_KEY_WORDS = ("PASS", "PWD", "SECRET", "TOKEN", "KEY", "CRED", "AUTH", "URI", "URL")


def known_secrets(spec: DumpSpec) -> list[str]:
    """Secret values this dump knows of, to be scrubbed from messages: passwords
    in its option file and passfile, the MongoDB URI, secret-looking variables."""
    found: list[str] = []
    extra: dict[str, str] = dict(spec.env)
    if spec.env_file:
        try:
            extra.update(read_env_file(spec.env_file))
        except DumpFailed:
            pass
    found += [v for k, v in extra.items() if any(w in k.upper() for w in _SECRET_KEY_WORDS)]
    for path, kind in ((spec.options_file, "cnf"), (spec.passfile, "pgpass"),
                       (spec.uri_file, "uri")):
        if not path:
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if kind == "cnf" and line.split("=", 1)[0].strip().lower() in ("password", "pass"):
                found.append(line.split("=", 1)[1].strip().strip("\"'") if "=" in line else "")
            elif kind == "pgpass" and line and not line.startswith("#"):
                found.append(line.split(":", 4)[-1])
            elif kind == "uri" and line:
                found.append(line)
                pw = urllib.parse.urlsplit(line).password
                if pw:
                    found += [pw, urllib.parse.unquote(pw)]
    return [s for s in found if s]


def tool_user(spec: DumpSpec) -> tuple[str | None, str | None]:
    """(user for Popen, cwd): the tools run as spec.run_as when set."""
    if not spec.run_as:
        return None, None
    try:
        pw = pwd.getpwnam(spec.run_as)
    except KeyError:
        raise DumpFailed(f"dump {spec.name}: run_as: no such user {spec.run_as!r}") from None
    if pw.pw_uid == os.getuid():
        return None, None
    if os.getuid() != 0:
        raise DumpFailed(f"dump {spec.name}: run_as {spec.run_as!r} needs ketch to run as root")
    # That user may not be allowed into our working directory.
    return spec.run_as, "/"


def find_tool(names: tuple[str, ...], env: dict[str, str], what: str) -> str:
    for n in names:
        found = shutil.which(n, path=env.get("PATH", os.defpath))
        if found:
            return found
    raise DumpFailed(f"{names[0]} not found on PATH (install the {what} client tools)")
