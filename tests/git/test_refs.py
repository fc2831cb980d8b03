"""Refs against git itself: what git sees after our updates, what we see after
git's, the lock protocol shared with `git update-ref`, reflogs byte-identical to
git's, and compare-and-swap holding up under racing processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from ketch.errors import EXIT_FAILED, KetchError, RefConflict
from ketch.git.refs import BadRefName, BadRefValue, Refs, check_ref_name, validate_branch_name
from tests.gitutil import git

ZERO = b"\0" * 20


def run_git(repo: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    return subprocess.run(
        ["git", "--git-dir", str(repo), *args],
        input=input,
        check=check,
        capture_output=True,
        env={**os.environ, **(env or {})},
    )


def init_repo(path: Path, log_all: bool = True) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    if log_all:
        git(path, "config", "core.logAllRefUpdates", "true")  # as `bup init` does
    return path


def make_commits(repo: Path, n: int) -> list[bytes]:
    """n real commits in a chain (written by git, reachable from no ref)."""
    stream = []
    for i in range(n):
        msg = b"c%d\n" % i
        stream.append(b"commit refs/tmp/build\nmark :%d\n" % (i + 1))
        stream.append(b"committer T <t@e.x> %d +0000\n" % (1_700_000_000 + i))
        stream.append(b"data %d\n%s" % (len(msg), msg))
        stream.append(b"M 100644 inline f\ndata %d\n%s\n\n" % (len(msg), msg))
    marks = repo / "marks"
    git(repo, "fast-import", "--quiet", f"--export-marks={marks}", input=b"".join(stream))
    git(repo, "update-ref", "-d", "refs/tmp/build")
    ids: dict[int, bytes] = {}
    for line in marks.read_bytes().splitlines():
        mark, hexid = line.split()
        ids[int(mark[1:])] = bytes.fromhex(hexid.decode())
    marks.unlink()
    return [ids[i + 1] for i in range(n)]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "r.git")


@pytest.fixture
def commits(repo: Path) -> list[bytes]:
    return make_commits(repo, 4)


def rev_parse(repo: Path, name: str) -> bytes | None:
    p = run_git(repo, "rev-parse", "-q", "--verify", name, check=False)
    return bytes.fromhex(p.stdout.strip().decode()) if p.returncode == 0 else None


def fsck(repo: Path) -> None:
    p = run_git(repo, "fsck", "--strict", "--no-dangling", check=False)
    problems = [ln for ln in p.stderr.splitlines() if not ln.startswith(b"notice:")]
    assert p.returncode == 0 and not problems, p.stderr.decode()


# -- reading ----------------------------------------------------------------


def test_read_loose_packed_and_symrefs(repo: Path, commits: list[bytes]) -> None:
    c1, c2, c3, _ = commits
    refs = Refs(repo)
    assert refs.read(b"HEAD") is None  # HEAD -> refs/heads/master, unborn
    assert refs.read_symref(b"HEAD") == b"refs/heads/master"
    git(repo, "update-ref", "refs/heads/master", c1.hex())
    git(repo, "update-ref", "refs/heads/other", c2.hex())
    git(repo, "tag", "-a", "-m", "t", "v1", c1.hex())
    assert refs.read(b"HEAD") == c1
    assert refs.read(b"refs/heads/other") == c2
    git(repo, "pack-refs", "--all")
    assert not (repo / "refs" / "heads" / "other").exists()
    assert refs.read(b"refs/heads/other") == c2
    assert refs.read(b"HEAD") == c1
    tag_id = rev_parse(repo, "refs/tags/v1")
    assert tag_id is not None and refs.read(b"refs/tags/v1") == tag_id
    # A loose ref shadows the (now stale) packed one.
    git(repo, "update-ref", "refs/heads/other", c3.hex())
    assert refs.read(b"refs/heads/other") == c3
    assert list(refs.iter_refs()) == [
        (b"refs/heads/master", c1),
        (b"refs/heads/other", c3),
        (b"refs/tags/v1", tag_id),
    ]
    assert list(refs.iter_refs(b"refs/heads/o")) == [(b"refs/heads/other", c3)]
    assert list(refs.iter_refs(b"refs/tags/")) == [(b"refs/tags/v1", tag_id)]
    git(repo, "symbolic-ref", "refs/heads/alias", "refs/heads/other")
    assert refs.read(b"refs/heads/alias") == c3
    assert (b"refs/heads/alias", c3) in list(refs.iter_refs())
    assert refs.read(b"refs/heads/nope") is None


def test_iter_refs_matches_git_show_ref(repo: Path, commits: list[bytes]) -> None:
    refs = Refs(repo)
    for i, name in enumerate(["a", "b/c", "b/d/e", "z"]):
        git(repo, "update-ref", f"refs/heads/{name}", commits[i].hex())
    git(repo, "pack-refs", "--all")
    git(repo, "update-ref", "refs/heads/b/x", commits[0].hex())
    shown = [
        (line.split()[1], bytes.fromhex(line.split()[0].decode()))
        for line in git(repo, "show-ref").splitlines()
    ]
    assert list(refs.iter_refs()) == shown
    # git's own lock files in refs/ are not refs
    (repo / "refs" / "heads" / "a.lock").write_bytes(b"junk")
    assert list(refs.iter_refs()) == shown


# -- compare-and-swap ---------------------------------------------------------


def test_create_update_and_stale_old(repo: Path, commits: list[bytes]) -> None:
    c1, c2, c3, _ = commits
    refs = Refs(repo)
    refs.update(b"refs/heads/main", c1, None)
    assert rev_parse(repo, "refs/heads/main") == c1
    assert (repo / "refs" / "heads" / "main").read_bytes() == c1.hex().encode() + b"\n"
    with pytest.raises(RefConflict, match="expected \\(none\\)"):
        refs.update(b"refs/heads/main", c2, None)  # create, but it exists
    refs.update(b"refs/heads/main", c2, c1)
    with pytest.raises(RefConflict, match=f"is at {c2.hex()}, expected {c1.hex()}"):
        refs.update(b"refs/heads/main", c3, c1)  # stale old
    assert refs.read(b"refs/heads/main") == c2
    with pytest.raises(RefConflict):
        refs.update(b"refs/heads/missing", c3, c1)  # expects a ref that is not there
    assert refs.read(b"refs/heads/missing") is None
    refs.update(b"refs/heads/created-with-zeros", c1, ZERO)  # zeros mean "must not exist"
    assert not list((repo / "refs" / "heads").glob("*.lock"))
    fsck(repo)


def test_update_packed_ref(repo: Path, commits: list[bytes]) -> None:
    c1, c2, _, _ = commits
    git(repo, "update-ref", "refs/heads/p", c1.hex())
    git(repo, "pack-refs", "--all")
    refs = Refs(repo)
    with pytest.raises(RefConflict):
        refs.update(b"refs/heads/p", c2, None)
    refs.update(b"refs/heads/p", c2, c1)
    assert rev_parse(repo, "refs/heads/p") == c2
    fsck(repo)


def test_existing_lock_is_a_conflict_and_not_stolen(repo: Path, commits: list[bytes]) -> None:
    c1, c2, _, _ = commits
    refs = Refs(repo)
    refs.update(b"refs/heads/main", c1, None)
    lock = repo / "refs" / "heads" / "main.lock"
    lock.write_bytes(b"someone else\n")
    with pytest.raises(RefConflict, match="main.lock exists"):
        refs.update(b"refs/heads/main", c2, c1)
    with pytest.raises(RefConflict, match="main.lock exists"):
        refs.delete(b"refs/heads/main", c1)
    assert lock.read_bytes() == b"someone else\n"
    assert refs.read(b"refs/heads/main") == c1
    lock.unlink()
    refs.update(b"refs/heads/main", c2, c1)


def test_git_respects_our_lock_protocol(repo: Path, commits: list[bytes]) -> None:
    c1, c2, _, _ = commits
    refs = Refs(repo)
    refs.update(b"refs/heads/main", c1, None)
    (repo / "refs" / "heads" / "main.lock").write_bytes(b"")
    p = run_git(repo, "update-ref", "refs/heads/main", c2.hex(), c1.hex(), check=False)
    assert p.returncode != 0 and b"main.lock" in p.stderr


def test_directory_file_conflicts(repo: Path, commits: list[bytes]) -> None:
    c1, _, _, _ = commits
    refs = Refs(repo)
    refs.update(b"refs/heads/a", c1, None)
    with pytest.raises(RefConflict):
        refs.update(b"refs/heads/a/b", c1, None)
    refs.update(b"refs/heads/x/y", c1, None)
    with pytest.raises(RefConflict):
        refs.update(b"refs/heads/x", c1, None)
    git(repo, "pack-refs", "--all")
    with pytest.raises(RefConflict):
        refs.update(b"refs/heads/x", c1, None)
    with pytest.raises(RefConflict):
        refs.update(b"refs/heads/a/b", c1, None)
    assert not list(repo.glob("refs/**/*.lock"))
    fsck(repo)


def test_bad_values_rejected(repo: Path, commits: list[bytes]) -> None:
    refs = Refs(repo)
    with pytest.raises(BadRefValue):
        refs.update(b"refs/heads/m", commits[0].hex().encode(), None)
    with pytest.raises(BadRefValue):
        refs.update(b"refs/heads/m", ZERO, None)
    with pytest.raises(BadRefName):
        refs.update(b"HEAD", commits[0], None)
    with pytest.raises(BadRefName):
        refs.update(b"refs/heads/../../config", commits[0], None)
    with pytest.raises(BadRefName):
        refs.read(b"refs/heads/../../config")


# -- deletion ----------------------------------------------------------------


def test_delete_loose_and_packed(repo: Path, commits: list[bytes]) -> None:
    c1, c2, _, _ = commits
    refs = Refs(repo)
    refs.update(b"refs/heads/deep/er/ref", c1, None)
    refs.update(b"refs/heads/keep", c2, None)
    with pytest.raises(RefConflict):
        refs.delete(b"refs/heads/deep/er/ref", c2)
    refs.delete(b"refs/heads/deep/er/ref", c1)
    assert refs.read(b"refs/heads/deep/er/ref") is None
    assert not (repo / "refs" / "heads" / "deep").exists()  # empty dirs pruned
    assert not (repo / "logs" / "refs" / "heads" / "deep").exists()
    with pytest.raises(RefConflict):
        refs.delete(b"refs/heads/deep/er/ref", c1)  # already gone

    git(repo, "tag", "-a", "-m", "t", "vt", c1.hex())
    git(repo, "update-ref", "refs/heads/packed", c1.hex())
    git(repo, "pack-refs", "--all")
    packed_before = (repo / "packed-refs").read_bytes()
    assert b"^" + c1.hex().encode() in packed_before  # the peeled line of vt
    refs.delete(b"refs/tags/vt", rev_parse(repo, "refs/tags/vt") or b"")
    refs.delete(b"refs/heads/packed", c1)
    packed_after = (repo / "packed-refs").read_bytes()
    assert b"refs/tags/vt" not in packed_after and b"^" not in packed_after
    assert b"refs/heads/packed" not in packed_after
    assert packed_after.startswith(b"# pack-refs with:")
    shown = git(repo, "show-ref").decode()
    assert "refs/heads/keep" in shown and "packed" not in shown and "vt" not in shown
    assert not (repo / "packed-refs.lock").exists()
    fsck(repo)


def test_delete_packed_ref_that_is_also_loose(repo: Path, commits: list[bytes]) -> None:
    c1, c2, _, _ = commits
    git(repo, "update-ref", "refs/heads/both", c1.hex())
    git(repo, "pack-refs", "--all")
    git(repo, "update-ref", "refs/heads/both", c2.hex())
    refs = Refs(repo)
    refs.delete(b"refs/heads/both", c2)
    # The stale packed value must not resurface.
    assert refs.read(b"refs/heads/both") is None
    assert rev_parse(repo, "refs/heads/both") is None


# -- reflogs ---------------------------------------------------------------


def test_reflog_is_byte_identical_to_gits(tmp_path: Path) -> None:
    ours = init_repo(tmp_path / "ours.git")
    theirs = init_repo(tmp_path / "theirs.git")
    c_ours = make_commits(ours, 2)
    c_theirs = make_commits(theirs, 2)
    assert c_ours == c_theirs
    c1, c2 = c_ours
    ident = b"Some One <some@one.example>"
    # HEAD points at refs/heads/master, so git logs master's moves in HEAD's log too.
    for branch in (b"refs/heads/master", b"refs/heads/side"):
        for old, new, when, tz, msg in (
            (None, c1, 1_700_000_000, b"+0530", b"bup save\n\nmultiline  msg"),
            (c1, c2, 1_700_000_100, b"-0330", b""),
        ):
            Refs(ours).update(branch, new, old, ident=ident, message=msg, when=when, tz=tz)
            env = {
                "GIT_COMMITTER_NAME": "Some One",
                "GIT_COMMITTER_EMAIL": "some@one.example",
                "GIT_COMMITTER_DATE": f"{when} {tz.decode()}",
            }
            args = ["update-ref"] + (["-m", msg.decode()] if msg else [])
            args += [branch.decode(), new.hex(), old.hex() if old else ""]
            run_git(theirs, *args, env=env)
    for log in ("logs/HEAD", "logs/refs/heads/master", "logs/refs/heads/side"):
        assert (ours / log).read_bytes() == (theirs / log).read_bytes(), log
    lines = (ours / "logs/refs/heads/side").read_bytes().splitlines()
    assert lines[0] == (
        b"0" * 40 + b" " + c1.hex().encode() + b" " + ident + b" 1700000000 +0530"
        b"\tbup save multiline msg"
    )
    shown = git(ours, "log", "-g", "--format=%H %gs", "refs/heads/side").splitlines()
    assert shown == [c2.hex().encode() + b" ", c1.hex().encode() + b" bup save multiline msg"]
    fsck(ours)


def test_reflog_follows_config(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "r.git", log_all=False)  # bare: git's default is no reflog
    c1, c2, _ = make_commits(repo, 3)
    refs = Refs(repo)
    refs.update(b"refs/heads/a", c1, None)
    assert not (repo / "logs" / "refs" / "heads" / "a").exists()
    git(repo, "config", "core.logAllRefUpdates", "true")
    refs.update(b"refs/tags/t", c1, None)  # "true" logs branches, not tags
    assert not (repo / "logs" / "refs" / "tags" / "t").exists()
    git(repo, "config", "core.logAllRefUpdates", "always")
    refs.update(b"refs/tags/u", c1, None)
    assert (repo / "logs" / "refs" / "tags" / "u").exists()
    git(repo, "config", "core.logAllRefUpdates", "false")
    refs.update(b"refs/tags/u", c2, c1)  # an existing reflog is always appended to
    assert len((repo / "logs" / "refs" / "tags" / "u").read_bytes().splitlines()) == 2


# -- racing updaters -----------------------------------------------------------

N_STEPS = 100


def _racer(
    git_dir: str, ids: list[bytes], worker: int, pause: float, out: multiprocessing.Queue[object]
) -> None:
    rng = random.Random(worker)
    index = {oid: i for i, oid in enumerate(ids)}
    refs = Refs(git_dir)
    won: list[int] = []
    conflicts = 0
    while True:
        cur = refs.read(b"refs/heads/counter")
        n = 0 if cur is None else index[cur] + 1
        if n >= len(ids):
            break
        try:
            refs.update(
                b"refs/heads/counter", ids[n], cur, message=b"worker %d step %d" % (worker, n)
            )
        except RefConflict:
            conflicts += 1
            continue
        finally:
            # Against git, whose every attempt is a process start, give it a chance.
            time.sleep(rng.random() * pause)
        won.append(n)
    out.put((worker, won, conflicts))


def _git_racer(git_dir: str, ids: list[bytes], out: multiprocessing.Queue[object]) -> None:
    """The same race through `git update-ref`, which must honour the same locks."""
    index = {oid: i for i, oid in enumerate(ids)}
    repo = Path(git_dir)
    won: list[int] = []
    while True:
        # Reading through Refs keeps the read-to-CAS window short enough to win.
        cur = Refs(repo).read(b"refs/heads/counter")
        n = 0 if cur is None else index[cur] + 1
        if n >= len(ids):
            break
        p = run_git(repo, "update-ref", "-m", f"git step {n}", "refs/heads/counter",
                    ids[n].hex(), cur.hex() if cur else "", check=False)  # fmt: skip
        if p.returncode == 0:
            won.append(n)
    out.put(("git", won, 0))


@pytest.mark.parametrize("with_git", [False, True])
def test_racing_cas_increments(tmp_path: Path, with_git: bool) -> None:
    repo = init_repo(tmp_path / "r.git")
    if with_git:
        ids = make_commits(repo, N_STEPS)  # git refuses to point a branch at a missing object
    else:
        ids = [hashlib.sha1(b"%d" % i).digest() for i in range(N_STEPS)]
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[object] = ctx.Queue()
    procs = [
        ctx.Process(target=_racer, args=(str(repo), ids, w, 0.02 if with_git else 0.0, out))
        for w in range(4)
    ]
    if with_git:
        procs.append(ctx.Process(target=_git_racer, args=(str(repo), ids, out)))
    for p in procs:
        p.start()
    results: list[tuple[object, list[int], int]] = [out.get(timeout=300) for _ in procs]  # type: ignore[misc]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    steps = sorted(n for _, won, _ in results for n in won)
    assert steps == list(range(N_STEPS))  # every step won exactly once
    assert Refs(repo).read(b"refs/heads/counter") == ids[-1]
    log = (repo / "logs" / "refs" / "heads" / "counter").read_bytes().splitlines()
    assert len(log) == N_STEPS
    prev = b"0" * 40
    for i, line in enumerate(log):
        old, new = line.split(b" ")[:2]
        assert (old, new) == (prev, ids[i].hex().encode())
        prev = new
    assert not list(repo.glob("refs/**/*.lock"))
    if with_git:
        fsck(repo)


# -- names -----------------------------------------------------------------

BAD_NAMES = [
    b"",
    b"@",
    b"/lead",
    b"trail/",
    b"dot.",
    b"a[b",
    b"a b",
    b"a~b",
    b"a^b",
    b"a:b",
    b"a?b",
    b"a*b",
    b"a\\b",
    b"a..b",
    b"a//b",
    b"a@{b",
    b"ctl\x01",
    b"tab\tx",
    b"del\x7f",
    b".hidden",
    b"a/.hidden",
    b"x.lock",
    b"x.lock/y",
    b"a/b",  # a branch is one component; refs/heads/a/b itself is a fine ref
]
GOOD_NAMES = [b"main", b"x-y_z", b"v1.2", b"@x", b"a@b", b"caf\xc3\xa9", b"lock"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_branch_names(name: bytes) -> None:
    with pytest.raises(BadRefName) as e:
        validate_branch_name(name)
    assert "\n" not in str(e.value)
    assert issubclass(BadRefName, KetchError) and BadRefName.exit_code == EXIT_FAILED == 2
    if name not in (b"@", b"a/b"):  # only a whole ref name may not be "@"; refs/heads/@ is fine
        with pytest.raises(BadRefName):
            check_ref_name(b"refs/heads/" + name)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_branch_names_are_good_for_git_too(repo: Path, name: bytes) -> None:
    validate_branch_name(name)
    check_ref_name(b"refs/heads/" + name)
    subprocess.run(["git", "check-ref-format", b"refs/heads/" + name], check=True)
    c = make_commits(repo, 1)[0]
    Refs(repo).update(b"refs/heads/" + name, c, None)
    assert rev_parse(repo, (b"refs/heads/" + name).decode()) == c
