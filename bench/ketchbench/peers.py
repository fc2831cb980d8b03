"""The four backup tools of the lifecycle phase: each one's commands to make a
repository, save a day with its date, apply the retention policy, reclaim the
space, and list the days it kept; and, for the cycle phase, restic's and
borg's commands to save DATA and restore all of it."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ketchbench.common import Tool, run_ok
from ketchbench.daily import DailyCorpus

# keep 7 daily, 4 weekly, 6 monthly (the policy)
POLICY = (("daily", 7), ("weekly", 4), ("monthly", 6))
POLICY_TEXT = ", ".join(f"{n} {period}" for period, n in POLICY)
PEER_NAMES = ("restic", "borg")  # beside ketch and bup (common.TOOL_NAMES)
NAME = "web1"  # the branch (ketch, bup), host (restic) of the saves
Step = tuple[str, list[str]]  # (label, command)


def _keep_args() -> list[str]:
    return [a for period, n in POLICY for a in (f"--keep-{period}", str(n))]


@dataclass
class Peer:
    """A tool's commands for the phase; ``env`` is the whole environment they run in."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    how: dict[str, str] = field(default_factory=dict)  # what runs, said for the results

    def init(self, repo: Path) -> None:
        raise NotImplementedError

    def save(self, repo: Path, data: Path, day: int) -> list[Step]:
        raise NotImplementedError

    def prune(self, repo: Path, newest: int) -> list[Step]:
        """The policy applied (``newest``: the last day saved); [] when the gc step does it."""
        raise NotImplementedError

    def gc(self, repo: Path) -> list[Step]:
        raise NotImplementedError

    def kept_days(self, repo: Path) -> list[int]:
        raise NotImplementedError

    def backup(self, repo: Path, data: Path, name: str) -> list[Step]:
        """The cycle: save ``data`` as a save called ``name`` (restic, borg)."""
        raise NotImplementedError

    def extract(self, repo: Path, name: str, out: Path) -> list[Step]:
        """The cycle: restore all of save ``name``, run in the (empty) directory
        ``out``; the copy of DATA lands at ``out``/DATA's absolute path."""
        raise NotImplementedError


class GitPeer(Peer):
    """ketch and bup: a branch of commits in a git repository."""

    def init(self, repo: Path) -> None:
        run_ok(Tool(self.name, self.argv).cmd(repo, "init"), self.env)

    def cmd(self, repo: Path, *args: str) -> list[str]:
        return Tool(self.name, self.argv).cmd(repo, *args)

    def kept_days(self, repo: Path) -> list[int]:
        out = run_ok(
            ["git", f"--git-dir={repo}", "log", "--format=%at", f"refs/heads/{NAME}"], self.env
        )
        return sorted(_day(int(t)) for t in out.split())


class Ketch(GitPeer):
    def __init__(self, argv: tuple[str, ...], env: dict[str, str]) -> None:
        super().__init__("ketch", argv, env, {
            "save": "ketch save -n web1 --date EPOCH DATA",
            "prune": f"ketch prune {' '.join(_keep_args())} web1",
            "gc": "ketch gc --json (threshold 10%, the default)",
            "encryption": "none (a local ketch repository is not encrypted)",
        })

    def save(self, repo: Path, data: Path, day: int) -> list[Step]:
        when = str(DailyCorpus.when(day))
        return [("save", self.cmd(repo, "save", "-n", NAME, "--date", when, str(data)))]

    def prune(self, repo: Path, newest: int) -> list[Step]:
        return [("prune", self.cmd(repo, "prune", *_keep_args(), NAME))]

    def gc(self, repo: Path) -> list[Step]:
        return [("gc", self.cmd(repo, "gc", "--json"))]


class Bup(GitPeer):
    """bup prune-older knows days, months and years within a period back from
    --wrt, and no weeks: 7 days of dailies and 6 months of monthlies, no
    weeklies. Its monthlies are the newest save of each month among the saves
    older than the dailies, where the others take the newest of the month."""

    def __init__(self, argv: tuple[str, ...], env: dict[str, str]) -> None:
        super().__init__("bup", argv, env, {
            "save": "bup index DATA + bup save -n web1 --date EPOCH DATA",
            "prune": "bup prune-older --unsafe --no-gc --wrt END_OF_LAST_DAY "
                     "--keep-dailies-for 7d --keep-monthlies-for 6m web1",
            "gc": "bup gc --unsafe (threshold 10%, the default)",
            "policy": "7 daily -> --keep-dailies-for 7d (the 7 days ending with the "
                      "last save's day); 6 monthly -> --keep-monthlies-for 6m; 4 weekly: "
                      "no equivalent (bup has no weeklies)",
            "encryption": "none",
        })

    def save(self, repo: Path, data: Path, day: int) -> list[Step]:
        when = str(DailyCorpus.when(day))
        return [("index", self.cmd(repo, "index", str(data))),
                ("save", self.cmd(repo, "save", "-n", NAME, "--date", when, str(data)))]

    def prune(self, repo: Path, newest: int) -> list[Step]:
        # The dailies reach back 7 days from --wrt: the end of the last day
        # saved makes them the 7 calendar days ending with it.
        wrt = DailyCorpus.when(newest) // 86_400 * 86_400 + 86_400 - 1
        return [("prune", self.cmd(repo, "prune-older", "--unsafe", "--no-gc", "--wrt", str(wrt),
                                   "--keep-dailies-for", "7d", "--keep-monthlies-for", "6m", NAME))]

    def gc(self, repo: Path) -> list[Step]:
        return [("gc", self.cmd(repo, "gc", "--unsafe"))]


class Restic(Peer):
    def __init__(self, argv: tuple[str, ...], env: dict[str, str], home: Path) -> None:
        password = home / "restic-password"
        password.write_text("ketch bench\n")
        env = {**env, "RESTIC_PASSWORD_FILE": str(password),
               "RESTIC_CACHE_DIR": str(home / "restic-cache")}
        super().__init__("restic", argv, env, {
            "save": "restic backup --host web1 --time 'Y-M-D h:m:s' --tag day-N DATA",
            "prune": "(in the gc step: forget --prune is one command)",
            "gc": f"restic forget {' '.join(_keep_args())} --prune",
            "encryption": "always (AES-256 + Poly1305; a password file); repository "
                          "format 2, compression auto (zstd)",
        })

    def cmd(self, repo: Path, *args: str) -> list[str]:
        return [*self.argv, "-r", str(repo), "--quiet", *args]

    def init(self, repo: Path) -> None:
        run_ok(self.cmd(repo, "init", "--repository-version", "2"), self.env)

    def save(self, repo: Path, data: Path, day: int) -> list[Step]:
        when = _iso(day, " ")
        return [("backup", self.cmd(repo, "backup", "--host", NAME, "--time", when,
                                    "--tag", f"day-{day}", str(data)))]

    def prune(self, repo: Path, newest: int) -> list[Step]:
        return []

    def gc(self, repo: Path) -> list[Step]:
        return [("forget --prune", self.cmd(repo, "forget", *_keep_args(), "--prune"))]

    def kept_days(self, repo: Path) -> list[int]:
        snaps = json.loads(run_ok(self.cmd(repo, "snapshots", "--json"), self.env) or "[]")
        return sorted(int(t[4:]) for s in snaps for t in s.get("tags") or [] if t[:4] == "day-")

    def backup(self, repo: Path, data: Path, name: str) -> list[Step]:
        # restic finds the parent snapshot (same host, same paths) by itself.
        return [("backup", self.cmd(repo, "backup", "--tag", name, str(data)))]

    def extract(self, repo: Path, name: str, out: Path) -> list[Step]:
        return [("restore", self.cmd(repo, "restore", "latest", "--tag", name,
                                     "--target", str(out)))]


class Borg(Peer):
    def __init__(self, argv: tuple[str, ...], env: dict[str, str], home: Path) -> None:
        env = {**env, "BORG_BASE_DIR": str(home / "borg-home"),
               "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
               "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
        super().__init__("borg", argv, env, {
            "save": "borg create --timestamp Y-M-DTh:m:s REPO::day-N DATA",
            "prune": f"borg prune {' '.join(_keep_args())}",
            "gc": "borg compact (threshold 10%, the default)",
            "policy": "borg's rules do not count a save an earlier rule kept: its "
                      "weeklies and monthlies reach further back than ketch's and restic's",
            "encryption": "none (borg init --encryption none, like ketch's local "
                          "repository); compression lz4, the default",
        })

    def init(self, repo: Path) -> None:
        run_ok([*self.argv, "init", "--encryption", "none", str(repo)], self.env)

    def save(self, repo: Path, data: Path, day: int) -> list[Step]:
        return [("create", [*self.argv, "create", "--timestamp", _iso(day, "T"),
                            f"{repo}::day-{day}", str(data)])]

    def prune(self, repo: Path, newest: int) -> list[Step]:
        return [("prune", [*self.argv, "prune", *_keep_args(), str(repo)])]

    def gc(self, repo: Path) -> list[Step]:
        return [("compact", [*self.argv, "compact", str(repo)])]

    def kept_days(self, repo: Path) -> list[int]:
        listing = json.loads(run_ok([*self.argv, "list", "--json", str(repo)], self.env))
        return sorted(int(a["name"][4:]) for a in listing["archives"])

    def backup(self, repo: Path, data: Path, name: str) -> list[Step]:
        return [("create", [*self.argv, "create", f"{repo}::{name}", str(data)])]

    def extract(self, repo: Path, name: str, out: Path) -> list[Step]:
        return [("extract", [*self.argv, "extract", f"{repo}::{name}"])]  # into the cwd


def _day(when: int) -> int:
    day = DailyCorpus.day_of(when)
    if day is None:
        raise RuntimeError(f"a save at {when} is at no day's time")
    return day


def _iso(day: int, sep: str) -> str:
    """The save time of ``day`` as local time (the phase runs with TZ=UTC)."""
    return _utc(DailyCorpus.when(day)).strftime(f"%Y-%m-%d{sep}%H:%M:%S")


def _utc(when: int) -> datetime:
    return datetime.fromtimestamp(when, UTC)


def make_peers(tools: list[Tool], wanted: tuple[str, ...], env: dict[str, str],
               home: Path) -> tuple[list[Peer], list[str]]:
    """ketch and bup from ``tools``, restic and borg from PATH if ``wanted``;
    and what is missing, said."""
    env = {**env, "TZ": "UTC"}  # days and months the same for every tool
    peers: list[Peer] = []
    missing: list[str] = []
    for tool in tools:
        peers.append(Ketch(tool.argv, env) if tool.name == "ketch" else Bup(tool.argv, env))
    for name in wanted:
        found = shutil.which(name)
        if found is None:
            missing.append(f"{name} is not installed (make deps)")
            continue
        home.mkdir(parents=True, exist_ok=True)
        peers.append((Restic if name == "restic" else Borg)((found,), env, home))
    return peers, missing

