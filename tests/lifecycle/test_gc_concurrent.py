"""gc while saves run: saves that began before gc hid its packs may have
deduplicated against what it hid, and must lose nothing (the leases, then the
rescue). 20 rounds; in each, one save re-adds exactly the content the round's
prune just made garbage. The saves run on the repository's machine, and over
ssh through `ketch server` (which holds the lease for its client)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SRC_DIR, RunKetch
from tests.lifecycle.gcsetup import DAY, T0, check_restores, corpus, fsck, prune, saved_repo
from tests.remote.conftest import sshd  # noqa: F401 - the ssh variant's server
from tests.remote.test_remote import Machine

ROUNDS = 20


def _start(*args: object, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR), **(extra or {}))
    env.pop("KETCH_TEST_CRASH", None)
    return subprocess.Popen([sys.executable, "-m", "ketch", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _done(p: subprocess.Popen[bytes], what: str) -> bytes:
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, f"{what}: exit {p.returncode}: {err.decode()}"
    return out


@pytest.mark.parametrize("via", ["local", "ssh"])
def test_saves_during_gc_lose_nothing(run_ketch: RunKetch, tmp_path: Path, via: str,
                                      request: pytest.FixtureRequest) -> None:
    rng = random.Random(11)
    repo = saved_repo(run_ketch, tmp_path, [0, 1, 2, 3])
    where: tuple[object, ...] = ("-d", repo)
    env: dict[str, str] = {}
    if via == "ssh":
        m = Machine.new(request.getfixturevalue("sshd"), "gc-race")
        where, env = ("-r", m.url(repo)), m.env
    on_m = [0, 1, 2, 3]
    revived: list[int] = []
    waited = rescued = 0
    for r in range(ROUNDS):
        gone = on_m[-3]
        revived.append(gone)
        on_m = on_m[-2:]
        prune(repo, set(on_m))  # `gone` is garbage now
        new_day = 4 + r
        corpus(tmp_path / f"new{r}", new_day)
        corpus(tmp_path / f"old{r}", gone)
        gc_args = ("gc", "-d", repo, "--threshold", "0", "--wait", "300", "--json")
        save_args = [
            ("save", "-q", *where, "-n", "m", "--strip", "--date", T0 + new_day * DAY,
             tmp_path / f"new{r}"),
            # Back from the dead: exactly the content gc is about to drop.
            ("save", "-q", *where, "-n", f"re{r}", "--strip", "--date", T0 + gone * DAY,
             tmp_path / f"old{r}"),
        ]
        # Either may start first: the saves' dedup lookups land before, during or
        # after gc's hide.
        if rng.random() < 0.5:
            gc = _start(*gc_args)
            time.sleep(rng.uniform(0.0, 0.4))
            saves = [_start(*a, extra=env) for a in save_args]
        else:
            saves = [_start(*a, extra=env) for a in save_args]
            time.sleep(rng.uniform(0.0, 0.4))
            gc = _start(*gc_args)
        for s in saves:
            _done(s, f"round {r}: save")
        report = json.loads(_done(gc, f"round {r}: gc"))
        waited += report["saves_waited"]
        rescued += report["objects_rescued"]
        on_m.append(new_day)
        fsck(repo)
        check_restores(run_ketch, repo, tmp_path, on_m)
        check_restores(run_ketch, repo, tmp_path, [gone], branch=f"re{r}")
    # Whether the race happened in a given run depends on timing (over ssh a
    # save's start-up often lets gc finish first); the checks above hold either
    # way. test_gc.py holds a lease across gc's hide deterministically.
    print(f"{via}: gc waited for {waited} saves and rescued {rescued} objects "
          f"in {ROUNDS} rounds")
    # One more gc with nothing running: everything saved is still there.
    assert run_ketch("gc", "-d", repo).returncode == 0
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, on_m)
    for r, day in enumerate(revived):
        check_restores(run_ketch, repo, tmp_path, [day], branch=f"re{r}")


def test_a_save_finishing_while_gc_lists_packs(run_ketch: RunKetch, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that writes its pack and moves its branch just after gc listed the
    packs (found by CI in round 11 of the test above): gc must not take the new
    branch tip for a missing object."""
    from ketch.lifecycle import gc as gcmod
    from ketch.localrepo import LocalRepository

    repo = saved_repo(run_ketch, tmp_path, [0, 1])
    corpus(tmp_path / "late", 5)
    real = gcmod.LiveSet

    class SaveLands(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, **k)
            run_ketch("save", "-q", "-d", repo, "-n", "late", "--strip", "--date",
                      T0 + 5 * DAY, tmp_path / "late", check=True)

    monkeypatch.setattr(gcmod, "LiveSet", SaveLands)
    report = gcmod.collect(LocalRepository(str(repo)), threshold=0.0, wait=10)
    assert report.warnings == []
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, [5], branch="late")
