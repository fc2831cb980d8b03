"""What `ketch config check` reports: whether the things a loaded config names
are there and usable — the repository opens, the paths are readable, the
databases answer, the log and lock files can be written, credential files are
private, the notification settings make sense.

Nothing is kept and nobody is notified: the repository is opened, and a local
one gets a file created and removed where a save writes; the ping URL is not
requested and no mail is sent (a check must not page anyone).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from ketch.errors import EXIT_FAILED, EXIT_OK, EXIT_WARNINGS, KetchError
from ketch.jobs.keycopy import judge_key_copy
from ketch.jobs.model import Config, DumpSpec, Notify
from ketch.jobs.schedule import CRON_PATH, SYSTEMD_DIR
from ketch.lifecycle.serverconfig import ServerConfig
from ketch.remote.location import is_remote, is_store_url
from ketch.text import plural

CREDENTIAL_KEYS = ("options_file", "passfile", "uri_file", "env_file")


@dataclass(frozen=True)
class CheckResult:
    """One line of `ketch config check`: ok, ok with a warning, or failed."""

    what: str
    ok: bool
    detail: str = ""
    warning: bool = False  # with ok: works, but worth a look (exit status 1)

    @property
    def status(self) -> str:
        return "fail" if not self.ok else "warn" if self.warning else "ok"

    def as_dict(self) -> dict[str, object]:
        return {"what": self.what, "status": self.status, "ok": self.ok,
                "warning": self.warning, "detail": self.detail}


def overall(results: list[CheckResult]) -> tuple[str, int]:
    """The worst status among `results` and its exit status: ok 0, warn 1, fail 2."""
    statuses = {r.status for r in results}
    for status, code in (("fail", EXIT_FAILED), ("warn", EXIT_WARNINGS)):
        if status in statuses:
            return status, code
    return "ok", EXIT_OK


def _ok(what: str, detail: str) -> CheckResult:
    return CheckResult(what, True, detail)


def _warn(what: str, detail: str) -> CheckResult:
    return CheckResult(what, True, detail, warning=True)


def _fail(what: str, detail: str) -> CheckResult:
    return CheckResult(what, False, detail)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return " ".join(str(e).split()) or type(e).__name__


def _check_repository(location: str, cfg: Config) -> CheckResult:
    from ketch.remote.location import open_location

    what = f"repository {location}"
    try:
        with open_location(location, endpoint_url=cfg.s3_endpoint,
                           encrypt_key=cfg.encrypt_key) as repo:
            branches = sum(1 for _ in repo.iter_refs(b"refs/heads/"))
    except (KetchError, OSError) as e:
        return _fail(what, _one_line(e))
    detail = f"opens; {branches} branch{'es' if branches != 1 else ''}"
    if is_remote(location):
        # The remote protocol has no write that leaves nothing behind.
        return _ok(what, f"{detail} (write access is not tested remotely: the first run "
                         "tells)")
    problem = _cannot_write(location)
    if problem:
        return _fail(what, f"{detail}, but {problem}")
    return _ok(what, f"{detail}, writable")


def _check_par2(location: str, cfg: Config) -> CheckResult:
    """`par2 = true`: par2 where the packs are written (asking a server for real)."""
    from ketch.integrity import parity
    from ketch.remote.location import open_location

    what = "par2"
    if not is_remote(location):
        if parity.available():
            return _ok(what, "installed: each new pack gets parity")
        return _fail(what, parity.NOT_INSTALLED)
    try:
        with open_location(location, endpoint_url=cfg.s3_endpoint,
                           encrypt_key=cfg.encrypt_key) as repo:
            repo.writable().make_parity(lambda _pack: None)
    except (KetchError, OSError) as e:
        return _fail(what, _one_line(e))
    return _ok(what, "the server makes parity for each new pack")


def _cannot_write(location: str) -> str | None:
    """Why a save could not write into the local repository, trying it for real
    where a save writes (packs, then refs): permissions, a read-only mount, ACLs."""
    for sub in ("objects/pack", "refs/heads"):
        directory = os.path.join(os.path.expanduser(location), sub)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".ketch-check-", dir=directory)
        except OSError as e:
            as_whom = "" if os.geteuid() == 0 else " (check as the user the nightly run uses)"
            return f"cannot write to {directory}: {e.strerror or e}{as_whom}"
        os.close(fd)
        os.unlink(tmp)
    return None


def _check_path(what: str, path: str) -> CheckResult:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _fail(what, "does not exist (a run fails this set until it does)")
    except OSError as e:
        return _fail(what, _one_line(e))
    is_dir = stat.S_ISDIR(st.st_mode)
    if not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
        return _fail(what, "not readable by this user")
    return _ok(what, "directory" if is_dir else "file")


def _check_secret(what: str, path: str) -> CheckResult:
    try:
        st = os.stat(path)
    except OSError as e:
        return _fail(what, _one_line(e))
    if not stat.S_ISREG(st.st_mode):
        return _fail(what, f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        return _fail(what, f"{path}: not readable by this user")
    if st.st_mode & stat.S_IROTH:
        return _warn(what, f"{path} holds credentials and every user can read it "
                           f"(chmod 600 {path})")
    return _ok(what, f"{path}: mode {stat.S_IMODE(st.st_mode):04o}")


def _key_copy(what: str, setting: str, key: str, copy: str | None, where: str) -> CheckResult:
    v = judge_key_copy(key, copy, where, setting)
    return {"ok": _ok, "warn": _warn, "fail": _fail}[v.level](what, v.detail)


def check_server_config(cfg: ServerConfig) -> list[CheckResult]:
    """The backup server's config (`ketch config check --server`): its root,
    and its mirror's key and where that key's copy is."""
    out: list[CheckResult] = []
    if cfg.root is None:
        out.append(_warn("root", "not set: ketch prune --all and the nightly job need ROOT"))
    elif not os.path.isdir(cfg.root):
        out.append(_fail("root", f"{cfg.root}: no such directory"))
    else:
        from ketch.lifecycle.fleet import find_repositories

        found = find_repositories(cfg.root)
        out.append(_ok("root", f"{cfg.root}: {plural(len(found), 'repository', 'repositories')}"))
        names = {os.path.basename(p) for p in found}
        out += [_warn(f"machine.{m}", f"no repository {cfg.root}/{m}: the policy applies to "
                                      "nothing") for m in cfg.machines if m not in names]
    if cfg.mirror_key is None:
        out.append(_ok("mirror", "no encrypted mirror named ([mirror] encrypt_key)"))
    else:
        out += [_check_secret("mirror.encrypt_key", cfg.mirror_key),
                _key_copy("mirror.key_copy", "[mirror] key_copy", cfg.mirror_key,
                          cfg.mirror_key_copy, "this server")]
    return out


def _check_dump(spec: DumpSpec) -> list[CheckResult]:
    what = f"dump {spec.name} ({spec.type})"
    out = [_check_secret(f"{what}: {key}", getattr(spec, key))
           for key in CREDENTIAL_KEYS if getattr(spec, key)]
    from ketch.jobs.dumps import check_dump  # runs client tools: loaded only when needed

    if any(not r.ok for r in out):
        return out  # check_dump would only say again that a file is missing
    try:
        problems = check_dump(spec)
    except (KetchError, OSError) as e:
        problems = [_one_line(e)]
    # check_dump's messages name the dump; the line already does
    prefix = f"dump {spec.name}: "
    problems = [p.removeprefix(prefix) for p in problems]
    return [*out, _fail(what, "; ".join(problems)) if problems else _ok(what, "reachable")]


def _check_writable(what: str, path: str) -> CheckResult:
    if os.path.exists(path):
        good = os.access(path, os.W_OK)
        return _ok(what, path) if good else _fail(what, f"{path}: not writable by this user")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):  # makedirs will create the rest
        parent = os.path.dirname(parent)
    if parent and os.access(parent, os.W_OK | os.X_OK):
        return _ok(what, f"{path} (will be created)")
    return _fail(what, f"cannot create {path}: {parent or '/'} is not writable by this user")


def _run_files(cfg: Config) -> list[tuple[str, str]]:
    """The log and lock files a run will use (the runner's defaults when unset)."""
    from ketch.jobs.runner import default_lock_path, default_log_path

    return [("log file", default_log_path(cfg)), ("lock file", default_lock_path(cfg))]


def _check_notify(n: Notify) -> list[CheckResult]:
    out: list[CheckResult] = []
    if n.ping_url is None and n.email is None:
        # Unattended, a failing backup that tells nobody is found on the day of the restore.
        out.append(_warn("notify", "nothing configured: a failed nightly run tells nobody "
                                   "(set [notify] ping_url or [notify.email])"))
    if n.ping_url is not None:
        out.append(_ok("notify.ping_url", f"{n.ping_url} (not pinged by the check)"))
    if n.on_success and n.email is None:
        out.append(_warn("notify.on_success", "has no effect without [notify.email] "
                                              "(pings always report success)"))
    e = n.email
    if e is None:
        return out
    what = "notify.email"
    if e.password_file:
        out.append(_check_secret(f"{what}.password_file", e.password_file))
    if e.username and not e.password_file:
        out.append(_warn(what, "username without password_file: the SMTP login will fail"))
    elif e.password_file and not e.username:
        out.append(_warn(what, "password_file without username is not used"))
    if (e.ssl and e.smtp_port in (25, 587)) or (e.starttls and e.smtp_port == 465):
        out.append(_warn(what, f"{'ssl' if e.ssl else 'starttls'} on port {e.smtp_port} "
                               "(SMTPS is usually 465, STARTTLS 587)"))
    local = e.smtp_host in ("localhost", "127.0.0.1", "::1")
    if e.username and e.password_file and not (e.ssl or e.starttls or local):
        out.append(_warn(what, "the password would cross the network unencrypted "
                               "(set starttls or ssl)"))
    out.append(_ok(what, f"to {', '.join(e.to)} via {e.smtp_host}:{e.smtp_port} "
                         "(no mail sent by the check)"))
    return out


def _check_retention(cfg: Config) -> CheckResult | None:
    """Which policy each set and dump has, and whether this repository lets a run apply it."""
    items = [(s.name, cfg.retention_of(s)) for s in cfg.sets] + \
            [(d.name, cfg.retention_of(d)) for d in cfg.dumps]
    if not any(table for _, table in items):
        return None
    detail = "; ".join(f"{name}: " + (", ".join(f"{k} {v}" for k, v in table.items())
                                      if table else "every save kept")
                       for name, table in items)
    if is_store_url(cfg.repository):
        return _warn("retention", f"{detail}; but an S3 mirror is read-only: it is not applied "
                                  "(prune the repository it mirrors)")
    if is_remote(cfg.repository):
        detail += " (a server key that is append-only leaves it to the server's own config)"
    return _ok("retention", detail)


def _check_schedule(cfg: Config, cron_path: str, systemd_dir: str) -> CheckResult:
    """What `ketch schedule show` says, as one line: installed, the config's, firing."""
    from ketch.jobs.firing import systemd_is_init, why_it_will_not_fire
    from ketch.jobs.schedule import show

    sched = cfg.schedule
    try:
        info = show(os.path.abspath(cfg.source), sched, cron_path=cron_path,
                    systemd_dir=systemd_dir, drill=cfg.drill.scheduled)
    except (KetchError, OSError) as e:
        return _fail("schedule", _one_line(e))
    if info.kind is None:
        if not sched.enabled:
            return _ok("schedule", "disabled")
        problem = why_it_will_not_fire("systemd" if systemd_is_init() else "cron")
        return _warn("schedule", "not installed (`ketch schedule install`)"
                     + (f"; and {problem}" if problem else ""))
    what = f"schedule ({info.kind}: {', '.join(info.files)})"
    if info.problem:
        return _fail(what, info.problem)
    if not info.up_to_date:
        return _fail(what, "; ".join(info.notes) or "differs from the config")
    when = f"next run {info.next_run:%Y-%m-%d %H:%M}" if info.next_run else "installed"
    drill = f"; restore drill {cfg.drill.schedule}" if cfg.drill.enabled else ""
    return _ok(what, f"daily at {sched.time}, up to {sched.randomized_delay} later; {when}"
               + drill)


def check_config(cfg: Config, *, progress: Callable[[str], None] | None = None,
                 cron_path: str = CRON_PATH, systemd_dir: str = SYSTEMD_DIR) -> list[CheckResult]:
    """Whether what `cfg` names is there: repository, paths, databases, files, the
    installed schedule, notify.

    Nothing is kept and nobody is notified; `progress` hears what is being checked."""
    say = progress or (lambda _: None)
    say(f"repository {cfg.repository}")
    out = [_check_repository(cfg.repository, cfg)]
    if cfg.encrypt_key:
        out += [_check_secret("encrypt_key", cfg.encrypt_key),
                _key_copy("encrypt_key_copy", "encrypt_key_copy", cfg.encrypt_key,
                          cfg.encrypt_key_copy, "this machine")]
    if cfg.par2:
        out.append(_check_par2(cfg.repository, cfg))
    if not cfg.sets and not cfg.dumps:
        out.append(_warn("backups", "nothing to back up: no [[set]] or [[dump]]"))
    for s in cfg.sets:
        for p in s.paths:
            out.append(_check_path(f"set {s.name}: {p}", p))
        for p in s.exclude_from:
            out.append(_check_path(f"set {s.name}: exclude_from {p}", p))
    for d in cfg.dumps:
        say(f"dump {d.name}")
        out.extend(_check_dump(d))
    out.extend(_check_writable(what, path) for what, path in _run_files(cfg))
    if (retention := _check_retention(cfg)) is not None:
        out.append(retention)
    out.append(_check_schedule(cfg, cron_path, systemd_dir))
    out.extend(_check_notify(cfg.notify))
    return out
