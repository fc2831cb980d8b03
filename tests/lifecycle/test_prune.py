"""`ketch prune` on real repositories: the kept saves' bytes, what git, bup and
ketch read afterwards, dry runs, refusals, saves that land while prune runs,
and prune over ssh."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ketch.errors import RefNotFound
from ketch.git import objects as gobj
from ketch.lifecycle.policy import KeepPolicy
from ketch.lifecycle.prune import prune
from ketch.localrepo import LocalRepository
from tests.conftest import RunBup, RunKetch, _subprocess_env
from tests.gitutil import git
from tests.offsite.conftest import s3_env, s3_server, s3_url  # noqa: F401 - fixtures
from tests.remote.conftest import sshd  # noqa: F401 - a fixture
from tests.remote.test_remote import KETCH_SERVER, Machine
from tests.services.sshd import SshServer

DAY = 86400
# 60 daily saves, 2026-10-02 .. 2026-11-30, 20:00 UTC.
FIRST = "2026-10-02"
DATES = [time.strftime("%Y-%m-%d", time.gmtime(
    time.mktime(time.strptime(FIRST, "%Y-%m-%d")) + i * DAY + 12 * 3600)) for i in range(60)]
# --keep-daily 7 --keep-weekly 4 --keep-monthly 6 of them (test_policy works it out).
KEPT = ["2026-10-31", "2026-11-15", "2026-11-22", "2026-11-24", "2026-11-25", "2026-11-26",
        "2026-11-27", "2026-11-28", "2026-11-29", "2026-11-30"]
POLICY = ["--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "6"]


def save_name(date: str) -> str:
    return f"{date}-200000"


def fsck(repo: Path) -> None:
    git(repo, "fsck", "--strict", "--no-dangling")


def first_parent_log(repo: Path, branch: str, fmt: str = "%H") -> list[str]:
    return git(repo, "log", "--first-parent", f"--format={fmt}", branch).decode().split()


def build_day(root: Path, day: int) -> None:
    """The source tree as it was on `day`: one file the same every day, one that
    grows, one that changes."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "static.bin").write_bytes(random.Random(-1).randbytes(300_000))
    (root / "log.txt").write_bytes(b"".join(b"line %d\n" % i for i in range(day * 50)))
    (root / "today.bin").write_bytes(random.Random(day).randbytes(40_000))


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Save names and days are local time: make that UTC for ketch, git and bup."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(scope="module")
def sixty_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with 60 daily saves by `ketch save --date` of a changing tree.
    The saves run in this process, through click as a user's command line does,
    without a new interpreter each (7 s for the 60 instead of 79 s, measured)."""
    from ketch.cli.main import cli

    base = tmp_path_factory.mktemp("sixty")
    repo, src = base / "repo", base / "src"
    subprocess.run([sys.executable, "-m", "ketch", "init", "-d", repo],
                   env=_subprocess_env(None), check=True, capture_output=True)
    for day, date in enumerate(DATES):
        build_day(src, day)
        args = ["save", "-d", str(repo), "-n", "daily", "-q", "--strip",
                "--date", f"{date}T20:00:00+00:00", str(src)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["ketch", *args])  # the commit message quotes it
            assert cli.main(args=args, prog_name="ketch", standalone_mode=False) == 0
    return repo


@pytest.fixture
def sixty(sixty_template: Path, tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(sixty_template, repo, symlinks=True)
    return repo


def test_sixty_daily_saves_pruned_to_the_policy(sixty: Path, run_ketch: RunKetch,
                                                bup: RunBup, tmp_path: Path) -> None:
    before = dict(zip(first_parent_log(sixty, "daily", "%cs"),
                      first_parent_log(sixty, "daily", "%T"), strict=True))
    raw_before = {d: git(sixty, "cat-file", "commit", c) for d, c in zip(
        first_parent_log(sixty, "daily", "%cs"), first_parent_log(sixty, "daily"), strict=True)}
    proc = run_ketch("prune", "-d", sixty, "daily", *POLICY)
    # Not a terminal: quiet.
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")
    assert first_parent_log(sixty, "daily", "%cs") == KEPT[::-1]
    assert len(git(sixty, "rev-list", "daily").split()) == len(KEPT)
    fsck(sixty)
    # Each kept save is its old commit with only its parent line changed.
    for date, commit in zip(first_parent_log(sixty, "daily", "%cs"),
                            first_parent_log(sixty, "daily"), strict=True):
        old = [ln for ln in raw_before[date].split(b"\n") if not ln.startswith(b"parent ")]
        new = [ln for ln in git(sixty, "cat-file", "commit", commit).split(b"\n")
               if not ln.startswith(b"parent ")]
        assert new == old
        assert git(sixty, "rev-parse", f"{commit}^{{tree}}").decode().strip() == before[date]
    # The oldest kept save has no parent left; the reflog says what happened.
    oldest = first_parent_log(sixty, "daily")[-1]
    assert b"\nparent " not in git(sixty, "cat-file", "commit", oldest)
    assert b"ketch prune: keep-daily 7, keep-weekly 4, keep-monthly 6: kept 10, removed 50 saves" \
        in (sixty / "logs" / "refs" / "heads" / "daily").read_bytes()
    names = [save_name(d).encode() for d in KEPT]
    assert run_ketch("ls", "-d", sixty, "daily", check=True).stdout.split() == [*names, b"latest"]
    assert bup(sixty, "ls", "daily").stdout.split() == [*names, b"latest"]
    # bup and ketch restore a kept save byte for byte as its day's source was.
    for date in ("2026-10-31", "2026-11-22", "2026-11-30"):
        src = tmp_path / f"src-{date}"
        build_day(src, DATES.index(date))
        bup(sixty, "restore", "-C", tmp_path / f"bup-{date}", f"daily/{save_name(date)}/.")
        same_files(src, tmp_path / f"bup-{date}")
        run_ketch("restore", "-d", sixty, "-C", tmp_path / f"ketch-{date}",
                  f"daily/{save_name(date)}/", check=True)
        same_files(src, tmp_path / f"ketch-{date}")
    # Pruning again with the same policy changes nothing.
    head = first_parent_log(sixty, "daily")[0]
    reflog = (sixty / "logs" / "refs" / "heads" / "daily").read_bytes()
    run_ketch("prune", "-d", sixty, "--all", *POLICY, check=True)
    assert first_parent_log(sixty, "daily")[0] == head
    assert (sixty / "logs" / "refs" / "heads" / "daily").read_bytes() == reflog


def packs(repo: Path) -> list[str]:
    return sorted(os.listdir(repo / "objects" / "pack"))


def test_dry_run_lists_every_save_and_changes_nothing(sixty: Path, run_ketch: RunKetch) -> None:
    head, before = first_parent_log(sixty, "daily")[0], packs(sixty)
    proc = run_ketch("prune", "-d", sixty, "daily", "--dry-run", *POLICY)
    assert proc.returncode == 0 and proc.stderr == b""
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "daily: 60 saves, keep 10, remove 50"
    rows = [ln.split(None, 3) for ln in lines[1:]]
    assert [r[0] for r in rows] == [save_name(d) for d in reversed(DATES)]
    assert [r[1] for r in rows] == [c[:8] for c in first_parent_log(sixty, "daily")]
    by_date = {r[0]: r[2:] for r in rows}
    assert by_date[save_name("2026-11-30")] == ["keep", "newest, daily, weekly, monthly"]
    assert by_date[save_name("2026-11-29")] == ["keep", "daily, weekly"]
    assert by_date[save_name("2026-10-31")] == ["keep", "monthly"]
    assert by_date[save_name("2026-11-23")] == ["remove"]
    assert sorted(d for d, r in by_date.items() if r[0] == "keep") == [save_name(d) for d in KEPT]
    assert first_parent_log(sixty, "daily")[0] == head and packs(sixty) == before
    assert len(first_parent_log(sixty, "daily")) == 60


def test_json_gives_the_decisions_and_the_summary(sixty: Path, run_ketch: RunKetch) -> None:
    old = first_parent_log(sixty, "daily")
    proc = run_ketch("prune", "-d", sixty, "daily", "--json", *POLICY, check=True)
    report = json.loads(proc.stdout)
    assert (report["kept"], report["removed"], report["dry_run"]) == (10, 50, False)
    assert report["policy"] == "keep-daily 7, keep-weekly 4, keep-monthly 6"
    (branch,) = report["branches"]
    assert branch["name"] == "daily" and branch["old_head"] == old[0]
    assert branch["new_head"] == first_parent_log(sixty, "daily")[0]
    assert [s["commit"] for s in branch["saves"]] == old
    kept = [s for s in branch["saves"] if s["keep"]]
    assert [s["date"][:10] for s in kept] == KEPT[::-1]
    assert [s["new_commit"] for s in kept] == first_parent_log(sixty, "daily")
    assert kept[0]["reasons"] == ["newest", "daily", "weekly", "monthly"]
    assert all(s["new_commit"] is None and s["reasons"] == []
               for s in branch["saves"] if not s["keep"])
    dry = json.loads(run_ketch("prune", "-d", sixty, "daily", "--json", "--dry-run",
                               "--keep-last", "3", check=True).stdout)
    assert (dry["kept"], dry["removed"], dry["dry_run"]) == (3, 7, True)


@pytest.mark.parametrize(("args", "says"), [
    (["daily"], "no keep option given (e.g. --keep-daily 7): refusing to remove every save "
                "but the newest"),
    (["--keep-daily", "7"], "give the branches to prune (NAME...), or --all for every branch"),
    (["--all", "daily", "--keep-daily", "7"], "give branch NAMEs or --all, not both"),
    (["daily", "nope", "--keep-daily", "7"], "no such branch: nope (branches: daily)"),
    (["daily", "--keep-within", "30"], "invalid duration '30': use a number and a unit"),
    (["daily", "--keep-daily", "-1"], "Invalid value for '--keep-daily'"),
])
def test_refusals_are_one_line_and_change_nothing(sixty: Path, run_ketch: RunKetch,
                                                  args: list[str], says: str) -> None:
    head = first_parent_log(sixty, "daily")[0]
    proc = run_ketch("prune", "-d", sixty, *args)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.startswith("ketch: error: ") and says in err, err
    assert err.count("\n") == 1 and proc.stdout == b""
    assert first_parent_log(sixty, "daily")[0] == head


def test_summary_on_a_terminal(sixty: Path) -> None:
    from tests.cli.test_habits import on_terminal

    code, said = on_terminal(["prune", "-d", str(sixty), "--all", "--keep-last", "5"])
    assert code == 0 and b"daily: kept 5 saves, removed 55 saves" in said, said


# -- in-process: the rewrite's details ----------------------------------------------------


def write_chain(repo: LocalRepository, branch: bytes, specs: list[tuple[int, bytes]],
                extra: dict[int, bytes] | None = None,
                merge: dict[int, bytes] | None = None) -> list[bytes]:
    """Commits oldest first, one per (time, header lines after committer): each
    with its own one-blob tree. `merge[i]`: a second parent of commit i."""
    ids: list[bytes] = []
    w = repo.writer()
    for i, (when, extra_header) in enumerate(specs):
        blob = w.write(gobj.BLOB, b"save %d\n" % i)
        tree = w.write(gobj.TREE, gobj.encode_tree([gobj.TreeEntry(0o100644, b"f", blob)]))
        parents = ([ids[-1]] if ids else []) + ([merge[i]] if merge and i in merge else [])
        data = gobj.encode_commit(tree, parents, b"A U Thor <a@example.com>", when, b"+0100",
                                  b"msg %d\n" % i, committer=b"C <c@example.com>",
                                  commit_when=when, commit_tz=b"-0500")
        if extra_header:
            head, _, msg = data.partition(b"\n\n")
            data = head + b"\n" + extra_header + b"\n\n" + msg
        ids.append(w.write(gobj.COMMIT, data))
    w.close()
    repo.update_ref(b"refs/heads/" + branch, ids[-1], None)
    return ids


def year(y: int) -> int:
    return int(time.mktime(time.strptime(f"{y}-06-01", "%Y-%m-%d")))


SIGNATURE = (b"gpgsig -----BEGIN PGP SIGNATURE-----\n \n parent 0000000000000000000000000000000000000000"
             b"\n -----END PGP SIGNATURE-----")


def test_kept_prefix_keeps_its_ids_and_other_headers_stay(repo_dir: Path) -> None:
    repo = LocalRepository(str(repo_dir))
    side = write_chain(repo, b"side", [(year(2015), b"")])[0]
    specs = [(year(2019), b""), (year(2020), b"encoding ISO-8859-1"), (year(2021) - DAY, b""),
             (year(2021), SIGNATURE), (year(2022), b""), (year(2022) + DAY, b"")]
    ids = write_chain(repo, b"b", specs, merge={5: side})
    report = prune(repo, ["b"], KeepPolicy(yearly=4))
    (result,) = report.branches
    assert [d.keep for d in result.decisions] == [True, False, True, False, True, True]
    new = first_parent_log(repo_dir, "b")
    # 2019 and 2020, below the first removed save, keep their ids.
    assert new[2:] == [ids[1].hex(), ids[0].hex()]
    assert set(result.rewritten) == {ids[3], ids[5]}
    for old_id, new_hex in ((ids[3], new[1]), (ids[5], new[0])):
        assert result.rewritten[old_id].hex() == new_hex
    old_raw = repo.read(ids[3])[1]
    new_raw = git(repo_dir, "cat-file", "commit", new[1])
    # The signature's continuation line that looks like a parent is not touched.
    assert new_raw == old_raw.replace(b"parent " + ids[2].hex().encode(),
                                      b"parent " + ids[1].hex().encode())
    assert SIGNATURE in new_raw
    # The kept merge's second parent is still there.
    assert git(repo_dir, "rev-parse", f"{new[0]}^2").decode().strip() == side.hex()
    assert first_parent_log(repo_dir, "b", "%ct") == [str(t) for t, _ in
                                                     (specs[5], specs[3], specs[1], specs[0])]
    fsck(repo_dir)
    assert report.exit_code == 0 and not report.warnings


def test_nothing_removed_leaves_the_branch_alone(repo_dir: Path) -> None:
    repo = LocalRepository(str(repo_dir))
    ids = write_chain(repo, b"b", [(year(2020), b""), (year(2021), b"")])
    reflog = (repo_dir / "logs" / "refs" / "heads" / "b").read_bytes()
    before = packs(repo_dir)
    report = prune(repo, None, KeepPolicy(yearly=2))
    assert report.branches[0].new_head == ids[-1] == repo.read_ref(b"refs/heads/b")
    assert (repo_dir / "logs" / "refs" / "heads" / "b").read_bytes() == reflog
    assert packs(repo_dir) == before


def test_unknown_name_changes_no_branch(repo_dir: Path) -> None:
    repo = LocalRepository(str(repo_dir))
    ids = write_chain(repo, b"b", [(year(2020), b""), (year(2021), b"")])
    with pytest.raises(RefNotFound, match="no such branches: x, y"):
        prune(repo, ["b", "x", "y"], KeepPolicy(last=1))
    assert repo.read_ref(b"refs/heads/b") == ids[-1]


def test_a_branch_that_is_not_a_save_is_left_alone_with_a_warning(repo_dir: Path) -> None:
    repo = LocalRepository(str(repo_dir))
    write_chain(repo, b"b", [(year(2020), b""), (year(2021), b"")])
    w = repo.writer()
    blob = w.write(gobj.BLOB, b"not a commit\n")
    w.close()
    repo.update_ref(b"refs/heads/blob", blob, None)
    report = prune(repo, None, KeepPolicy(last=1))
    assert report.warnings == ["branch blob points at a blob, not a save: left alone"]
    assert report.exit_code == 1 and [b.name for b in report.branches] == ["b"]
    assert repo.read_ref(b"refs/heads/blob") == blob


class SaveLandsFirst(LocalRepository):
    """A real repository where, just before prune moves a branch, `ketch save`
    (a real one, in a subprocess) adds a save to it: the interleaving a
    concurrent save gives, every time."""

    def __init__(self, path: str, saves: list[list[str]]) -> None:
        super().__init__(path)
        self.saves = saves

    def update_ref(self, name: bytes, new: bytes, old: bytes | None,
                   message: bytes = b"") -> None:
        if self.saves:
            subprocess.run([sys.executable, "-m", "ketch", *self.saves.pop(0)],
                           env=_subprocess_env(None), check=True, capture_output=True)
        super().update_ref(name, new, old, message)


def test_a_save_landing_while_prune_runs_is_kept(repo_dir: Path, tmp_path: Path) -> None:
    src = [tmp_path / f"src{i}" for i in range(5)]
    for i, s in enumerate(src):
        build_day(s, i)
    env = _subprocess_env({"TZ": "UTC"})
    for s, date in zip(src[:3], ("2019-12-01", "2020-01-01", "2020-02-01"), strict=True):
        subprocess.run([sys.executable, "-m", "ketch", "save", "-d", repo_dir, "-n", "b",
                        "--strip", "--date", date, s], env=env, check=True, capture_output=True)
    # Two saves land, one before each of prune's first two swaps.
    late = [["save", "-d", str(repo_dir), "-n", "b", "--strip", "--date", date, str(s)]
            for s, date in zip(src[3:], ("2020-03-01", "2020-04-01"), strict=True)]
    repo = SaveLandsFirst(str(repo_dir), late)
    report = prune(repo, ["b"], KeepPolicy(last=2))
    (result,) = report.branches
    assert result.attempts == 3 and not repo.saves
    assert first_parent_log(repo_dir, "b", "%cs") == ["2020-04-01", "2020-03-01"]
    fsck(repo_dir)


def test_gives_up_on_a_branch_that_keeps_moving(repo_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    build_day(src, 0)
    save = ["save", "-d", str(repo_dir), "-n", "b", str(src)]
    for _ in range(2):
        subprocess.run([sys.executable, "-m", "ketch", *save], env=_subprocess_env(None),
                       check=True, capture_output=True)
    repo = SaveLandsFirst(str(repo_dir), [save] * 10)
    report = prune(repo, ["b"], KeepPolicy(last=1))
    assert report.exit_code == 2 and not report.branches
    assert report.errors == ["branch b kept moving while prune ran; gave up after 10 attempts "
                             "(nothing of it was removed)"]
    assert len(first_parent_log(repo_dir, "b")) == 12


def test_saves_running_beside_prunes_are_never_lost(repo_dir: Path, tmp_path: Path) -> None:
    """Saves and prunes of one branch at once, all real processes. The saves
    dated now are kept by --keep-within 1d, the ones dated 2020 are what the
    prunes remove: every save dated now must be in the history at the end."""
    jobs: list[list[str]] = []
    for i in range(10):
        build_day(tmp_path / f"new{i}", 100 + i)
        build_day(tmp_path / f"old{i}", 200 + i)
        jobs.append(["save", "-d", str(repo_dir), "-n", "b", "-q", "--json",
                     str(tmp_path / f"new{i}")])
        jobs.append(["save", "-d", str(repo_dir), "-n", "b", "-q", "--json", "--date",
                     f"2020-01-{i + 1:02d}", str(tmp_path / f"old{i}")])
    prunes = [["prune", "-d", str(repo_dir), "b", "--keep-within", "1d", "--json"]] * 8
    # The first save makes the branch; then everything at once, in a fixed shuffle.
    rest = jobs[1:] + prunes
    random.Random(11).shuffle(rest)
    env = _subprocess_env({"TZ": "UTC"})

    def run(args: list[str]) -> tuple[list[str], subprocess.CompletedProcess[bytes]]:
        return args, subprocess.run([sys.executable, "-m", "ketch", *args], env=env,
                                    capture_output=True, timeout=300)

    done = [run(jobs[0])]
    began = time.monotonic()
    # Four at a time: with six on a loaded 2-core machine, a save once lost 8
    # swaps in a row to the other writers and gave up (a clear error, save's
    # own limit in advance_branch).
    with ThreadPoolExecutor(4) as pool:
        done += pool.map(run, rest)
    seconds = time.monotonic() - began
    trees, removed, retries = set(), 0, 0
    for args, proc in done:
        assert proc.returncode == 0, (args, proc.stderr.decode())
        if args[0] == "save" and "--date" not in args:
            trees.add(json.loads(proc.stdout)["tree"])
        if args[0] == "prune":
            report = json.loads(proc.stdout)
            removed += report["removed"]
            retries += report["branches"][0]["attempts"] - 1
    print(f"{len(rest)} saves and prunes in {seconds:.1f} s, {removed} saves pruned meanwhile, "
          f"{retries} prunes decided again after a save landed")
    assert removed > 0  # the prunes did rewrite the branch while saves landed
    history = set(first_parent_log(repo_dir, "b", "%T"))
    assert len(trees) == 10 and trees <= history
    fsck(repo_dir)


# -- other writers and other places -------------------------------------------------------


def test_a_branch_written_by_bup_prunes(bup: RunBup, run_ketch: RunKetch, tmp_path: Path) -> None:
    repo, src = tmp_path / "bup", tmp_path / "src"
    bup(repo, "init")
    days = [int(time.mktime(time.strptime(f"2026-03-{d:02d} 22:00", "%Y-%m-%d %H:%M")))
            for d in range(1, 7)]
    for day, when in enumerate(days):
        build_day(src, day)
        bup(repo, "index", src)
        bup(repo, "save", "-n", "b", "--strip", "--date", str(when), src)
    proc = run_ketch("prune", "-d", repo, "b", "--keep-last", "2", "--keep-weekly", "2",
                     "--dry-run", check=True)
    # 03-01 is a Sunday: ISO week 9 ends there, week 10 holds the rest.
    assert [ln.split()[2] for ln in proc.stdout.decode().splitlines()[1:]] == [
        "keep", "keep", "remove", "remove", "remove", "keep"]
    run_ketch("prune", "-d", repo, "b", "--keep-last", "2", "--keep-weekly", "2", check=True)
    assert first_parent_log(repo, "b", "%ct") == [str(days[5]), str(days[4]), str(days[0])]
    fsck(repo)
    names = [time.strftime("%Y-%m-%d-%H%M%S", time.localtime(days[i])).encode()
             for i in (0, 4, 5)]
    assert bup(repo, "ls", "b").stdout.split() == [*names, b"latest"]
    bup(repo, "restore", "-C", tmp_path / "out", f"b/{names[0].decode()}/.")
    build_day(tmp_path / "day0", 0)
    same_files(tmp_path / "day0", tmp_path / "out")


def dated_saves(run_ketch: RunKetch, repo: Path, src: Path, dates: list[str]) -> None:
    for day, date in enumerate(dates):
        build_day(src, day)
        run_ketch("save", "-d", repo, "-n", "b", "-q", "--strip", "--date", date, src,
                  check=True)


def test_prune_over_ssh(sshd: SshServer, run_ketch: RunKetch,  # noqa: F811
                        tmp_path: Path) -> None:
    repo = tmp_path / "srv" / "repo"
    run_ketch("init", "-d", repo, check=True)
    dated_saves(run_ketch, repo, tmp_path / "src", ["2026-05-01", "2026-05-02", "2026-05-03"])
    m = Machine.new(sshd, "prune-normal")
    url = m.url(repo)
    dry = run_ketch("prune", "-r", url, "b", "--keep-last", "2", "--dry-run", env=m.env,
                    check=True)
    assert [ln.split()[2] for ln in dry.stdout.decode().splitlines()[1:]] == [
        "keep", "keep", "remove"]
    run_ketch("prune", "-r", url, "--all", "--keep-last", "2", env=m.env, check=True)
    assert first_parent_log(repo, "b", "%cs") == ["2026-05-03", "2026-05-02"]
    fsck(repo)
    out = tmp_path / "out"
    run_ketch("restore", "-r", url, "-C", out, "b/2026-05-02-000000/", env=m.env, check=True)
    build_day(tmp_path / "day1", 1)
    same_files(tmp_path / "day1", out)


def test_an_append_only_key_cannot_prune(sshd: SshServer, run_ketch: RunKetch,  # noqa: F811
                                         tmp_path: Path) -> None:
    repo = tmp_path / "srv" / "repo"
    run_ketch("init", "-d", repo, check=True)
    dated_saves(run_ketch, repo, tmp_path / "src", ["2026-05-01", "2026-05-02", "2026-05-03"])
    head = first_parent_log(repo, "b")
    m = Machine.new(sshd, "prune-append-only", forced=f"{KETCH_SERVER} --append-only")
    proc = run_ketch("prune", "-r", m.url(repo), "b", "--keep-last", "1", env=m.env)
    err = proc.stderr.decode()
    print(err, end="")
    assert proc.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("ketch: error: ") and "append-only" in err, err
    assert first_parent_log(repo, "b") == head
    fsck(repo)


def test_a_read_only_mirror_refuses(s3_url: str, run_ketch: RunKetch,  # noqa: F811
                                    tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    dated_saves(run_ketch, repo, tmp_path / "src", ["2026-05-01", "2026-05-02"])
    run_ketch("mirror", "push", repo, s3_url, check=True)
    proc = run_ketch("prune", "-r", f"{s3_url}/repo", "b", "--keep-last", "1")
    err = proc.stderr.decode()
    print(err, end="")
    assert proc.returncode == 2 and err.count("\n") == 1 and "read-only" in err, err


def test_sigkill_or_ctrl_c_anywhere_in_prune_leaves_the_old_or_the_new_branch(
        sixty_template: Path, tmp_path: Path) -> None:
    """SIGKILL or SIGINT at points spread over a prune's run: the branch is the
    old one or the pruned one, never anything between, and git fsck --strict is
    clean; Ctrl-C says so in one line."""
    env = _subprocess_env({"TZ": "UTC"})
    outcomes = []
    for n, delay in enumerate([0.4, 0.8, 1.2, 1.6, 2.2, 3.0]):
        sig = signal.SIGKILL if n % 2 else signal.SIGINT
        repo = tmp_path / f"repo{n}"
        shutil.copytree(sixty_template, repo, symlinks=True)
        proc = subprocess.Popen([sys.executable, "-m", "ketch", "prune", "-d", repo, "daily",
                                 *POLICY], env=env, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate()
        # A SIGINT before Python's own handler is in place (or after it is
        # gone at exit) ends the interpreter silently; before the command ran
        # the message is the plain "interrupted".
        if sig == signal.SIGINT and proc.returncode not in (0, -signal.SIGINT):
            assert proc.returncode == 2 and err.decode().strip() in (
                "ketch: error: interrupted", "ketch: error: interrupted (the branches pruned "
                "so far stay so; the others are as they were)"), err
        fsck(repo)
        dates = first_parent_log(repo, "daily", "%cs")
        assert dates in (KEPT[::-1], list(reversed(DATES))), dates
        outcomes.append(f"{sig.name}:{'new' if dates == KEPT[::-1] else 'old'}")
        # The next prune finishes what the stopped one did not.
        subprocess.run([sys.executable, "-m", "ketch", "prune", "-d", repo, "daily", *POLICY],
                       env=env, check=True)
        assert first_parent_log(repo, "daily", "%cs") == KEPT[::-1]
        fsck(repo)
    print("stopped prunes left the branch:", " ".join(outcomes))
