"""What `ketch --help` and the completion of command names show for each
command, kept here so that neither imports the commands' modules."""

from __future__ import annotations

import click

# What `ketch --help` lists for each command (its short_help, else the first
# paragraph of its help), so that listing them imports none of their modules;
# tests/cli/test_startup.py checks these against the commands themselves.
SUMMARIES = {
    "cat-file": "Print an object: ID, REF, REF:PATH, or a VFS path NAME/DATE/PATH.",
    "completion": "Print the completion script for SHELL.",
    "config": "Write and check this machine's backup config.",
    "drill": "Prove the backups restorable: restore a random sample of every set's latest "
             "save (at least one large chunked file), compare it with the live files (or "
             "re-hash every object of a file that changed since), and load every database "
             "dump into a throwaway server from this machine's binaries.",
    "fsck": "Check a repository: packs, idx, midx and bloom files, refs, and every object "
            "every save needs.",
    "gc": "Delete what no branch or tag reaches, and give the space back.",
    "help": "Help topics (ketch help config: the config file's keys).",
    "index": "Refresh the index for PATHS and remember their exclude rules for `save`.",
    "init": "Create a repository (a bare git repository bup also reads).",
    "join": "Write the bytes stored by `split` (a branch, commit, tree or blob id) to stdout.",
    "ls": "List paths of the repository the way `bup ls` does.",
    "mirror": "Offsite copies in S3: push repositories, verify, pull, and read them in place.",
    "mount": "Mount the repository read-only at MOUNTPOINT: the NAME/DATE/path tree of `ls`, "
             "with each file's mode, owner, size, times and symlink target.",
    "prune": "Remove the saves a retention policy does not keep.",
    "restore": "Restore PATHs (e.g. NAME/latest/home/me) from saves into the output "
               "directory.",
    "runbook": "Print this machine's disaster procedures as the exact commands to run: "
               "files lost, a database damaged, the machine lost, the backup server lost.",
    "run": "Run every backup set and dump of the config (or only NAMES), once.",
    "save": "Save PATHS (exactly these, recursively) as a new save on branch NAME.",
    "schedule": "Run the backup every night: a systemd timer (cron where there is no "
                "systemd).",
    "server": "Serve a repository on stdin/stdout (started by ssh; speaks bup's protocol).",
    "web": "Serve a read-only web dashboard of the backups: every machine's last saves, "
           "runs, mirror pushes, drills and fsck; browse and download files.",
    "split": "Split FILES (or stdin) into chunks, as bup does, and store them.",
}
# The commands whose summary is their short_help: click shows it whole.
WHOLE = frozenset({"help", "prune"})


def summary(name: str, limit: int = 45) -> str:
    """What click would show for the command ``name`` in ``limit`` columns."""
    text = SUMMARIES[name]
    whole = name in WHOLE
    stand_in = click.Command(name, short_help=text if whole else None,
                             help=None if whole else text)
    return stand_in.get_short_help_str(limit)
