"""`ketch fsck --all ROOT`: every repository under ROOT checked, one line
each (its full report in --json); the exit status is the worst of them. Each
keeps its result on refs/ketch/fsck (ketch.integrity.fsckrecord), given back
to the repository's owner afterwards when run as root (each_repository)."""

from __future__ import annotations

from ketch.integrity.fsck import FsckRun
from ketch.integrity.fsckrecord import store_fsck_report
from ketch.lifecycle.fleet import FleetReport, MachineResult, each_repository
from ketch.localrepo import LocalRepository
from ketch.text import plural


def fsck_all(root: str, job: FsckRun) -> FleetReport:
    report = FleetReport("fsck", root)

    def one(name: str, repo: LocalRepository) -> MachineResult:
        got = repo.check_integrity(job)
        store_fsck_report(repo, got, job.options)
        problems = got["problems"]
        if not problems:
            summary = (f"ok ({plural(got['packs'], 'pack')}, "
                       f"{plural(got['objects'], 'object', grouped=True)})")
        else:
            worst = "DAMAGED" if got["exit_code"] >= 2 else "warnings"
            summary = f"{worst}: {plural(len(problems), 'problem')}; {problems[0]['message']}"
        return MachineResult(name, repo.path, "done", summary, int(got["exit_code"]), got)

    return each_repository(root, report, one)
