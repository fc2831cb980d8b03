"""`ketch runbook`: this machine's disaster procedures as the exact commands to
run, filled in from its config (repository, sets, dumps), so that at 3 a.m.
the operator copies them rather than composes them.

One procedure per disaster (docs/disaster-recovery.md explains each):

    files      files lost on the machine: find them, restore them
    database   a database damaged: reload last night's dump
    machine    the machine lost: a new one, its config, its sets, its dumps
    server     the backup server lost: read from the S3 mirror, then rebuild

Each command names its repository (`-r`/`-d`), so the procedures also work
away from the machine, where there is no config to default to. The dump files
are named from the repository's latest save of each dump when it can be read;
otherwise the procedure lists the save first (`ketch ls`).
"""

from __future__ import annotations

import os
import posixpath
import shlex
from dataclasses import asdict, dataclass, field

from ketch.errors import KetchError
from ketch.jobs.dumps import restore_command
from ketch.jobs.model import Config, DumpSpec
from ketch.remote.location import is_remote, is_store_url
from ketch.repo import Repository
from ketch.vfs import VFS

PROCEDURES = ("files", "database", "machine", "server")


@dataclass
class Step:
    say: str  # what the step does, for a person
    commands: list[str] = field(default_factory=list)


@dataclass
class Procedure:
    name: str
    title: str
    steps: list[Step] = field(default_factory=list)


@dataclass
class Runbook:
    machine: str
    config: str
    repository: str
    procedures: list[Procedure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def text(self) -> str:
        lines = [f"# ketch runbook for {self.machine}",
                 f"# config {self.config}, repository {self.repository}", ""]
        lines += [f"# warning: {w}" for w in self.warnings]
        if self.warnings:
            lines.append("")
        for p in self.procedures:
            lines += [f"## {p.title}", ""]
            for i, s in enumerate(p.steps, 1):
                lines.append(f"# {i}. {s.say}")
                lines += s.commands
                lines.append("")
        return "\n".join(lines).rstrip() + "\n"


def repo_flag(location: str) -> str:
    """The option naming the repository: `-r` for a server or a bucket, `-d` for a directory."""
    flag = "-r" if is_remote(location) or is_store_url(location) else "-d"
    return f"{flag} {shlex.quote(location)}"


def _restore_path(flag: str, branch: str, path: str) -> str:
    """The restore that puts `path` (absolute, as the set saved it) back where it was."""
    path = path.rstrip("/") or "/"
    if path == "/":
        return f"ketch restore {flag} -C / {shlex.quote(branch + '/latest/')}"
    return (f"ketch restore {flag} -C {shlex.quote(posixpath.dirname(path))} "
            f"{shlex.quote(branch + '/latest' + path)}")


def _config_set(cfg: Config) -> tuple[str, str] | None:
    """(set, path) of the set that saves the config file, if one does."""
    src = os.path.abspath(cfg.source) if cfg.source else ""
    for s in cfg.sets:
        for p in s.paths:
            top = p.rstrip("/") or "/"
            if src == top or src.startswith(top.rstrip("/") + "/"):
                return s.name, posixpath.dirname(src)
    return None


def _dump_lines(flag: str, spec: DumpSpec, files: list[str] | None) -> list[str]:
    # A new machine has no directory for the database file yet.
    first = ([f"mkdir -p {shlex.quote(posixpath.dirname(spec.path))}"]
             if spec.type == "sqlite" and spec.path else [])
    return first + _reloads(flag, spec, files)


def _reloads(flag: str, spec: DumpSpec, files: list[str] | None) -> list[str]:
    if not files:
        return [f"ketch ls {flag} {shlex.quote(spec.name + '/latest')}    # the dump's files",
                "# then, for each FILE listed:",
                restore_command(spec, "FILE").replace("ketch cat-file ",
                                                      f"ketch cat-file {flag} ", 1)]
    return [restore_command(spec, f).replace("ketch cat-file ", f"ketch cat-file {flag} ", 1)
            for f in files]


def build(cfg: Config, machine: str, *, mirror: str | None = None,
          server_root: str = "/srv/ketch",
          dump_files: dict[str, list[str]] | None = None) -> Runbook:
    """The runbook of `cfg`. `mirror`: the S3 mirror of the backup server
    (s3://BUCKET/PREFIX), for the server procedure; `dump_files`: each dump's
    files in its latest save, where the repository could be read."""
    flag = repo_flag(cfg.repository)
    source = os.path.abspath(cfg.source) if cfg.source else ""
    book = Runbook(machine, source, cfg.repository)
    dump_files = dump_files or {}
    first = cfg.sets[0] if cfg.sets else None

    files = Procedure("files", "Files lost on this machine")
    if first is not None:
        p = first.paths[0].rstrip("/") or "/"
        files.steps = [
            Step("Find them: list a set's saves and look inside one (or browse them all "
                 "with ketch mount)",
                 [f"ketch ls {flag} {shlex.quote(first.name)}",
                  f"ketch ls {flag} -l {shlex.quote(first.name + '/latest' + p)}",
                  f"mkdir -p /mnt/ketch && ketch mount {flag} --daemon /mnt/ketch"]),
            Step("Restore beside the live files, compare, then move them in place",
                 [f"ketch restore {flag} -C /tmp/ketch-restore "
                  f"{shlex.quote(first.name + '/latest' + p)}",
                  f"diff -r /tmp/ketch-restore/{shlex.quote(posixpath.basename(p) or '.')} "
                  f"{shlex.quote(p)}"]),
            Step("Or restore in place (overwrites what is there; --no-clobber keeps it)",
                 [_restore_path(flag, first.name, p)]),
        ]
    else:
        book.warnings.append("the config has no sets: only dumps are backed up")
    book.procedures.append(files)

    database = Procedure("database", "A database damaged: reload last night's dump")
    if cfg.dumps:
        database.steps.append(Step("Stop what writes to it; then, with pipefail so that a "
                                   "failed read is not taken for an empty dump:",
                                   ["set -o pipefail"]))
        for d in cfg.dumps:
            say = f"dump {d.name} ({d.type})"
            if d.type == "sqlite" and d.path:
                say += (f": written beside the database; stop the application, move it over "
                        f"{d.path} and remove {d.path}-wal and -shm")
            database.steps.append(Step(say, _dump_lines(flag, d, dump_files.get(d.name))))
    else:
        database.steps.append(Step("This machine's config has no dumps."))
    book.procedures.append(database)

    machine_p = Procedure("machine", "This machine lost: a new machine in its place")
    machine_p.steps.append(Step("Install ketch (the wheel built with make dist on the server)",
                                ["scripts/install-ketch.sh ketch-*.whl"]))
    if is_remote(cfg.repository) and not is_store_url(cfg.repository):
        machine_p.steps.append(Step(
            "Give it a key and let the server take it for this machine's repository "
            "(on the server: ketch server setup-client, as when it was added)",
            ["ssh-keygen -t ed25519 -N '' -f /root/.ssh/id_ed25519",
             f"# on the server: ketch server setup-client --root {server_root} "
             f"{shlex.quote(machine)} /path/to/its/id_ed25519.pub"]))
    where = _config_set(cfg)
    if where is not None:
        set_name, config_dir = where
        machine_p.steps.append(Step("Its config first (it names the sets and dumps)",
                                    [_restore_path(flag, set_name, config_dir)]))
    else:
        book.warnings.append(f"{cfg.source or 'the config'} is in no set: a new machine "
                             "cannot get it back from the backups (add its directory to "
                             "a set, e.g. /etc)")
    for s in cfg.sets:
        machine_p.steps.append(Step(f"set {s.name}",
                                    [_restore_path(flag, s.name, p) for p in s.paths]))
    for d in cfg.dumps:
        reload = ["set -o pipefail", *_dump_lines(flag, d, dump_files.get(d.name))]
        if d.type == "sqlite" and d.path:
            # Nothing uses the database yet on a new machine: the copy goes in place.
            reload.append(f"mv -n {shlex.quote(d.path + '.restored')} {shlex.quote(d.path)}")
        machine_p.steps.append(Step(f"dump {d.name}: once the database server runs", reload))
    c = f" -c {shlex.quote(source)}" if source else ""
    machine_p.steps.append(Step("Check the config and schedule the nightly run again",
                                [f"ketch config check{c}", f"ketch schedule install{c}"]))
    book.procedures.append(machine_p)

    server = Procedure("server", "The backup server lost")
    url = mirror or "s3://BUCKET/PREFIX"
    if mirror is None:
        book.warnings.append("no --mirror: the server procedure says s3://BUCKET/PREFIX")
    store = f"-r {shlex.quote(url.rstrip('/') + '/' + machine)}"
    server.steps += [
        Step("Meanwhile, restore from the mirror in S3 (read in place, nothing to download first)",
             [f"ketch ls {store} {shlex.quote(first.name)}" if first else f"ketch ls {store}",
              *([_restore_path(store, first.name, first.paths[0])] if first else [])]),
        Step("A new server: pull every repository from the mirror, check them",
             [f"ketch mirror pull {shlex.quote(url)} {shlex.quote(server_root)}",
              f"ketch fsck --all {shlex.quote(server_root)}",
              f"ketch mirror verify {shlex.quote(url)} --root {shlex.quote(server_root)}"]),
        Step("Let the machines in again: each machine's key, as when it was added",
             [f"ketch server setup-client --root {shlex.quote(server_root)} "
              f"{shlex.quote(machine)} /path/to/{shlex.quote(machine)}.pub"]),
    ]
    book.procedures.append(server)
    return book


def latest_dump_files(repo: Repository, cfg: Config) -> dict[str, list[str]]:
    """Each dump's files in its latest save (none for one that cannot be read)."""
    vfs = VFS(repo)
    out: dict[str, list[str]] = {}
    for d in cfg.dumps:
        try:
            item = vfs.resolve(f"{d.name}/latest".encode())
            out[d.name] = sorted(c.name.decode("utf-8", "surrogateescape")
                                 for c in vfs.contents(item) if not c.is_dir)
        except KetchError:
            continue
    return out
