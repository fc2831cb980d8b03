"""The backup server's nightly retention job, as `ketch schedule install
--server` installs it: which repositories (ROOT), which server config, when,
and as whom (the repositories' owner)."""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass

from ketch.errors import UsageError
from ketch.jobs.model import Schedule
from ketch.lifecycle.fleet import find_repositories
from ketch.lifecycle.serverconfig import default_server_config_path, load_server_config

USER_RX = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")  # what a unit or crontab can hold


@dataclass(frozen=True)
class ServerJob:
    """The backup server's nightly retention of every repository under `root`,
    run as `user`: the repositories' owner, whose forced-command server must go
    on writing the refs, reflogs and packs that prune and gc write."""

    root: str
    user: str = "root"

    @property
    def log(self) -> str:
        """Where the cron job appends its reports (the owner may write there;
        systemd keeps them in the journal)."""
        return os.path.join(self.root, "ketch-retention.log")


def server_job(config: str | None, root: str | None) -> tuple[str, Schedule, ServerJob]:
    """(server config path, schedule, job): ROOT defaults to the config's `root`."""
    path = os.path.abspath(config or default_server_config_path())
    cfg = load_server_config(path)
    root = root or cfg.root
    if not root:
        raise UsageError(f"which repositories? give ROOT, or set root in {path}")
    if not os.path.isdir(root):
        raise UsageError(f"{root}: no such directory")
    root = os.path.abspath(root)
    job = ServerJob(root, owner(root))
    _check_access(path, root, job.user)
    return path, Schedule(time=cfg.time, randomized_delay="0"), job


def _check_access(config: str, root: str, user: str) -> None:
    """The job runs as `user`: a config only root may read, or a ROOT behind a
    directory they cannot search, would fail it every night."""
    from ketch.remote.access import Denied, R, X, account, need, reach

    who = account(user)
    try:
        need(reach(config, who), who, R)
    except Denied as e:
        raise UsageError(f"{e}: the nightly job runs as {user}, who could not read it "
                         f"(chmod 644 {config}, or give it to {user})") from None
    try:
        need(reach(root, who), who, R | X)
    except Denied as e:
        raise UsageError(f"{e}: the nightly job runs as {user}, who could not reach "
                         f"{root}") from None


def owner(root: str) -> str:
    """Who owns the repositories under ROOT (ROOT's owner while there are none)."""
    uids = {os.stat(p).st_uid for p in find_repositories(root)} or {os.stat(root).st_uid}
    names = []
    for uid in sorted(uids):
        try:
            names.append(pwd.getpwuid(uid).pw_name)
        except KeyError:
            raise UsageError(f"a repository under {root} belongs to uid {uid}, which has no "
                             "user name") from None
    if len(names) > 1:
        raise UsageError(f"the repositories under {root} belong to {', '.join(names)}: the "
                         "nightly job runs as one user (chown -R the others to it)")
    return names[0]
