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
import pwd
import shlex
from dataclasses import asdict, dataclass, field

from ketch.errors import KetchError
from ketch.jobs.configsave import CONFIG_SET, config_paths
from ketch.jobs.dumps import restore_command
from ketch.jobs.model import Config, DumpSpec
from ketch.remote.location import is_remote, is_store_url
from ketch.remote.spec import parse_remote
from ketch.repo import Repository
from ketch.vfs import VFS

PROCEDURES = ("files", "database", "machine", "server")
NO_MIRROR = "no --mirror: the server procedure says s3://BUCKET/PREFIX"


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

    def keep(self, names: tuple[str, ...]) -> None:
        """Only the procedures `names`, and only the warnings that concern them."""
        self.procedures = [p for p in self.procedures if p.name in names]
        if "server" not in names:
            self.warnings = [w for w in self.warnings if w != NO_MIRROR]

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


def _login_user(repository: str) -> str:
    """Who the machine logs in to the backup server as: the repository's user@,
    else whoever prints this (ssh's default: the nightly runs' user)."""
    if is_remote(repository) and not is_store_url(repository):
        user, at, _ = (parse_remote(repository).host or "").rpartition("@")
        if at:
            return user
    return pwd.getpwuid(os.geteuid()).pw_name


def _restore_path(flag: str, branch: str, path: str) -> str:
    """The restore that puts `path` (absolute, as the set saved it) back where it was."""
    path = path.rstrip("/") or "/"
    if path == "/":
        return f"ketch restore {flag} -C / {shlex.quote(branch + '/latest/')}"
    return (f"ketch restore {flag} -C {shlex.quote(posixpath.dirname(path))} "
            f"{shlex.quote(branch + '/latest' + path)}")


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
          mirror_key: str | None = None, facts: RepositoryFacts | None = None) -> Runbook:
    """The runbook of `cfg`. `mirror`: the S3 mirror of the backup server
    (s3://BUCKET/PREFIX), for the server procedure, and `mirror_key` its key
    file; `facts`: what the repository says, where it could be read."""
    source = os.path.abspath(cfg.source) if cfg.source else ""
    book = Runbook(machine, source, cfg.repository)
    known = facts or RepositoryFacts()
    book.procedures = [_files(book, cfg), _database(cfg, known),
                       _machine(book, cfg, machine, server_root, facts),
                       _server(book, cfg, machine, mirror, mirror_key, server_root)]
    return book


def _files(book: Runbook, cfg: Config) -> Procedure:
    flag = repo_flag(cfg.repository)
    files = Procedure("files", "Files lost on this machine")
    if not cfg.sets:
        book.warnings.append("the config has no sets: only dumps are backed up")
        return files
    first = cfg.sets[0]
    p = first.paths[0].rstrip("/") or "/"
    files.steps = [
        Step("Find them: list a set's saves and look inside one (or browse them all "
             "with ketch mount)",
             [f"ketch ls {flag} {shlex.quote(first.name)}",
              f"ketch ls {flag} -l {shlex.quote(first.name + '/latest' + p)}",
              f"mkdir -p /mnt/ketch && ketch mount {flag} --daemon /mnt/ketch",
              f"ls /mnt/ketch/{shlex.quote(first.name)}/    # a directory per save"]),
        Step("Restore beside the live files, compare, then move them in place",
             [f"ketch restore {flag} -C /tmp/ketch-restore "
              f"{shlex.quote(first.name + '/latest' + p)}",
              # Symlinks compared as links: one whose target is lost is not an error.
              f"diff -r --no-dereference "
              f"/tmp/ketch-restore/{shlex.quote(posixpath.basename(p) or '.')} "
              f"{shlex.quote(p)}"]),
        Step("Or restore in place (overwrites what is there; --no-clobber keeps it)",
             [_restore_path(flag, first.name, p)]),
        Step("When done", ["fusermount3 -u /mnt/ketch"]),
    ]
    return files


def _database(cfg: Config, facts: RepositoryFacts) -> Procedure:
    flag = repo_flag(cfg.repository)
    database = Procedure("database", "A database damaged: reload last night's dump")
    if not cfg.dumps:
        database.steps.append(Step("This machine's config has no dumps."))
        return database
    database.steps.append(Step("Stop what writes to it; then, with pipefail so that a "
                               "failed read is not taken for an empty dump:",
                               ["set -o pipefail"]))
    for d in cfg.dumps:
        say = f"dump {d.name} ({d.type})"
        if d.type == "sqlite" and d.path:
            say += (f": written beside the database; stop the application, move it over "
                    f"{d.path} and remove {d.path}-wal and -shm")
        elif d.type in ("mysql", "postgresql"):
            say += (": each database's dump recreates it, so drop the damaged one first "
                    "(DROP DATABASE, nothing connected); else a PostgreSQL reload stops "
                    "at CREATE DATABASE, and a MySQL one leaves what was made since")
        database.steps.append(Step(say, _dump_lines(flag, d, facts.dump_files.get(d.name))))
    return database


def _machine(book: Runbook, cfg: Config, machine: str, server_root: str,
             facts: RepositoryFacts | None) -> Procedure:
    flag = repo_flag(cfg.repository)
    proc = Procedure("machine", "This machine lost: a new machine in its place")
    proc.steps.append(Step("Install ketch (the wheel built with make dist on the server)",
                           ["scripts/install-ketch.sh ketch-*.whl"]))
    if is_remote(cfg.repository) and not is_store_url(cfg.repository):
        proc.steps.append(Step(
            "Give it a key and let the server take it for this machine's repository "
            "(on the server: ketch server setup-client, as when it was added)",
            ["ssh-keygen -t ed25519 -N '' -f /root/.ssh/id_ed25519",
             f"# on the server: ketch server setup-client --root {server_root} "
             f"--user {shlex.quote(_login_user(cfg.repository))} "
             f"{shlex.quote(machine)} /path/to/its/id_ed25519.pub"]))
    saved = config_paths(cfg)
    if saved:
        proc.steps.append(Step(f"Its config first (every run saves it as {CONFIG_SET}; "
                               "it names the sets and dumps)",
                               [_restore_path(flag, CONFIG_SET, p) for p in saved]))
    if facts is not None and not facts.config_saved:
        book.warnings.append(f"the repository has no {CONFIG_SET} yet: a new machine could "
                             "not get this config back (the next ketch run saves it)")
    for s in cfg.sets:
        proc.steps.append(Step(f"set {s.name}",
                               [_restore_path(flag, s.name, p) for p in s.paths]))
    dump_files = facts.dump_files if facts is not None else {}
    for d in cfg.dumps:
        reload = ["set -o pipefail", *_dump_lines(flag, d, dump_files.get(d.name))]
        if d.type == "sqlite" and d.path:
            # Nothing uses the database yet on a new machine: the copy goes in place.
            reload.append(f"mv -n {shlex.quote(d.path + '.restored')} {shlex.quote(d.path)}")
        proc.steps.append(Step(f"dump {d.name}: once the database server runs", reload))
    c = f" -c {shlex.quote(book.config)}" if book.config else ""
    proc.steps.append(Step("Check the config and schedule the nightly run again",
                           [f"ketch config check{c}", f"ketch schedule install{c}"]))
    return proc


def _server(book: Runbook, cfg: Config, machine: str, mirror: str | None,
            mirror_key: str | None, server_root: str) -> Procedure:
    url = mirror or "s3://BUCKET/PREFIX"
    if mirror is None:
        book.warnings.append(NO_MIRROR)
    first = cfg.sets[0] if cfg.sets else None
    store = f"-r {shlex.quote(url.rstrip('/') + '/' + machine)}"
    root = shlex.quote(server_root)
    # The key's copy kept away from the server: every command below needs it.
    key = [f"export KETCH_ENCRYPT_KEY={shlex.quote(mirror_key)}"] if mirror_key else []
    login = _login_user(cfg.repository)
    # Pulled, checked and verified as root: the machines' user must own them to write.
    chown = [] if login == "root" else [f"chown -R {shlex.quote(login)}: {root}"]
    return Procedure("server", "The backup server lost", [
        Step("Meanwhile, restore from the mirror in S3 (read in place, nothing to download first)",
             [*key,
              f"ketch ls {store} {shlex.quote(first.name)}" if first else f"ketch ls {store}",
              *([_restore_path(store, first.name, first.paths[0])] if first else [])]),
        Step("A new server: pull every repository from the mirror, check them",
             [*key,
              f"ketch mirror pull {shlex.quote(url)} {root}",
              f"ketch fsck --all {root}",
              f"ketch mirror verify {shlex.quote(url)} --root {root}"]),
        Step("Let the machines in again: each machine's key, as when it was added",
             [*chown,
              f"ketch server setup-client --root {root} --user {shlex.quote(login)} "
              f"{shlex.quote(machine)} /path/to/{shlex.quote(machine)}.pub"]),
        Step("The server's own jobs: put its /etc/ketch/server.toml back from where it is "
             "kept, then check it and schedule the nightly retention again",
             ["ketch config check --server", "ketch schedule install --server"]),
        Step("Push again once the machines' runs go on",
             [*key, f"ketch mirror push --all {root} {shlex.quote(url)}"]),
    ])


@dataclass
class RepositoryFacts:
    """What the runbook reads from the machine's repository."""

    dump_files: dict[str, list[str]] = field(default_factory=dict)  # in each latest save
    config_saved: bool = False  # a ketch-config save is there


def read_facts(repo: Repository, cfg: Config) -> RepositoryFacts:
    """Each dump's files in its latest save (none for one that cannot be read),
    and whether the config has been saved."""
    vfs = VFS(repo)
    out = RepositoryFacts(config_saved=repo.read_ref(b"refs/heads/" + CONFIG_SET.encode())
                          is not None)
    for d in cfg.dumps:
        try:
            item = vfs.resolve(f"{d.name}/latest".encode())
            names = [c.name.decode("utf-8", "surrogateescape")
                     for c in vfs.contents(item) if not c.is_dir]
            roles_first = d.type == "postgresql" and d.globals
            # Roles first: the databases' dumps name them as owners and in grants.
            out.dump_files[d.name] = sorted(
                names, key=lambda n: (not (roles_first and n == "globals.sql"), n))
        except KetchError:
            continue
    return out
