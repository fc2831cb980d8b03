"""`ketch fsck` on a local repository made by real `ketch save`s: clean (and git
fsck agrees), then each kind of damage a disk can do, found, located (pack and
offset) and named by the save and path it damages; caches are warnings. Each
check is kept in the repository (refs/ketch/fsck), on a backup server too."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from ketch import reportlog
from ketch.git.idx import PackIndex
from ketch.git.midx import write_midx
from ketch.integrity import parity
from ketch.integrity.fsck import check_repository
from ketch.localrepo import LocalRepository
from tests.conftest import RunKetch, _subprocess_env
from tests.gitutil import git
from tests.remote.conftest import sshd  # noqa: F401 - a fixture
from tests.remote.test_remote import KETCH_SERVER, Machine
from tests.services.sshd import SshServer


def _ketch(*args: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "ketch", *map(str, args)], check=True,
                   env=_subprocess_env(None), capture_output=True)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with two saves of web1: a 3 MB file in 400-odd chunks, and
    an nginx.conf."""
    top = tmp_path_factory.mktemp("fsck")
    data = top / "data"
    (data / "etc" / "nginx").mkdir(parents=True)
    (data / "big.bin").write_bytes(os.urandom(3_000_000))
    (data / "etc" / "nginx" / "nginx.conf").write_text("server { listen 80; }\n")
    repo = top / "repo"
    _ketch("init", "-d", repo)
    _ketch("save", "-d", repo, "-n", "web1", data)
    (data / "etc" / "motd").write_text("hello\n")
    _ketch("save", "-d", repo, "-n", "web1", data)
    return repo


@pytest.fixture
def repo(made: Path, tmp_path: Path) -> Path:
    shutil.copytree(made, tmp_path / "repo")
    return tmp_path / "repo"


def _big_pack(repo: Path) -> Path:
    return max((repo / "objects" / "pack").glob("*.pack"), key=lambda p: p.stat().st_size)


def _fsck(repo: Path, **kw: object) -> dict:
    with LocalRepository(str(repo)) as r:
        return check_repository(r, **kw).as_dict()  # type: ignore[arg-type]


def _messages(report: dict) -> str:
    return "\n".join(p["message"] for p in report["problems"])


def _entry_offsets(pack: Path) -> list[int]:
    ix = PackIndex(str(pack.with_suffix(".idx")))
    try:
        return sorted(int(o) for o in ix.offsets())
    finally:
        ix.close()


def test_clean_repository_exit_0_and_git_agrees(repo: Path, run_ketch: RunKetch) -> None:
    out = run_ketch("fsck", "-d", repo, "--read-data")
    assert out.returncode == 0, out.stderr
    assert b": ok (" in out.stdout
    assert subprocess.run(["git", "--git-dir", str(repo), "fsck", "--strict"],
                          capture_output=True).returncode == 0
    quick = run_ketch("fsck", "-d", repo, "--quick", "--json")
    report = json.loads(quick.stdout)
    # refs/heads/web1, and refs/ketch/fsck where the first check keeps its record
    assert quick.returncode == 0 and report["ok"] and report["quick"] and report["refs"] == 2
    packs = len(list((repo / "objects" / "pack").glob("*.pack")))
    assert packs >= 2
    # Half the packs (rounded up), at random.
    assert _fsck(repo, read_data=50)["packs_read"] == (packs + 1) // 2


def test_flipped_byte_names_file_pack_and_offset(repo: Path, run_ketch: RunKetch) -> None:
    pack = _big_pack(repo)
    offsets = _entry_offsets(pack)
    at = offsets[len(offsets) // 2] + 30  # inside a chunk of big.bin
    raw = bytearray(pack.read_bytes())
    raw[at] ^= 0xFF
    pack.write_bytes(raw)
    entry = max(o for o in offsets if o <= at)
    out = run_ketch("fsck", "-d", repo)
    assert out.returncode == 2
    text = out.stdout.decode()
    line = next(ln for ln in text.splitlines() if "big.bin" in ln)
    assert "web1: " in line and "/data/big.bin: blob " in line
    assert f"{pack.name} damaged at offset {entry})" in line
    assert "(and 1 other save)" in line  # both saves hold the file; named once
    assert sum("big.bin" in ln for ln in text.splitlines()) == 1
    # One damage, one line for the pack: located, so not also "the trailer fails".
    assert [ln for ln in text.splitlines() if "damaged:" in ln and "big.bin" not in ln] == [
        f"  damaged: {pack.name}: 1 damaged entry at offset {entry} (fails its CRC32)"]


def test_zeroed_block_and_truncation_and_missing_files(repo: Path) -> None:
    pack = _big_pack(repo)
    with open(pack, "r+b") as f:
        f.seek(1 << 20)
        f.write(bytes(4096))
    got = _fsck(repo)
    assert got["exit_code"] == 2
    lines = _messages(got)
    assert "damaged entries at offset" in lines or "damaged entry at offset" in lines
    assert "big.bin" in lines

    os.truncate(pack, pack.stat().st_size // 2)
    got = _fsck(repo, quick=True)
    assert got["exit_code"] == 2 and f"{pack.name} is truncated" in _messages(got)

    pack.unlink()
    got = _fsck(repo)
    assert f"{pack.name} is missing" in _messages(got)
    assert "/: tree" in _messages(got) or "commit" in _messages(got)


def test_deleted_idx(repo: Path) -> None:
    pack = _big_pack(repo)
    pack.with_suffix(".idx").unlink()
    got = _fsck(repo)
    assert got["exit_code"] == 2
    assert f"{pack.with_suffix('.idx').name} is missing" in _messages(got)
    assert " missing" in _messages(got).split("\n", 1)[1]  # the objects it held


def test_ref_to_missing_commit(repo: Path, run_ketch: RunKetch) -> None:
    (repo / "refs" / "heads" / "ghost").write_text("1" * 40 + "\n")
    for quick in ([], ["--quick"]):
        out = run_ketch("fsck", "-d", repo, *quick)
        assert out.returncode == 2
        assert f"ghost: points to commit {'1' * 12}…, which is missing" in out.stdout.decode()


def test_corrupt_bloom_and_midx_are_warnings(repo: Path, run_ketch: RunKetch) -> None:
    pack_dir = repo / "objects" / "pack"
    idx = sorted(str(p) for p in pack_dir.glob("*.idx"))
    midx = Path(write_midx(str(pack_dir), idx))
    assert _fsck(repo)["exit_code"] == 0
    bloom = pack_dir / "bup.bloom"
    raw = bytearray(bloom.read_bytes())
    bits = struct.unpack_from(">4sIHHI", raw)[2]
    raw[16 : 16 + (1 << bits)] = bytes(1 << bits)  # says "absent" for every id
    bloom.write_bytes(raw)
    m = bytearray(midx.read_bytes())
    m[12 + 4 * 2] ^= 0xFF  # the fan-out
    midx.write_bytes(m)
    out = run_ketch("fsck", "-d", repo)
    assert out.returncode == 1, out.stdout
    text = out.stdout.decode()
    assert "warning: bup.bloom:" in text and f"warning: {midx.name}:" in text
    assert "fsck --repair rebuilds it" in text
    fixed = _fsck(repo, repair=True)
    assert {r["file"] for r in fixed["repairs"]} == {"bup.bloom", midx.name}
    assert _fsck(repo)["exit_code"] == 0


def test_read_data_finds_what_the_crc_misses(repo: Path) -> None:
    """An entry damaged and its idx CRC updated to match: only inflating finds it."""
    pack = _big_pack(repo)
    idx_path = pack.with_suffix(".idx")
    offsets = _entry_offsets(pack)
    entry, end = offsets[10], offsets[11]
    raw = bytearray(pack.read_bytes())
    raw[entry + 40] ^= 0x01
    pack.write_bytes(raw)
    ix = PackIndex(str(idx_path))
    i = [int(o) for o in ix.offsets()].index(entry)
    crc_off = 8 + 1024 + 20 * ix.count + 4 * i
    ix.close()
    data = bytearray(idx_path.read_bytes())
    data[crc_off:crc_off + 4] = struct.pack(">I", zlib.crc32(raw[entry:end]))
    data[-20:] = hashlib.sha1(data[:-20]).digest()
    idx_path.write_bytes(data)
    plain = _messages(_fsck(repo))
    assert f"offset {entry}" not in plain  # only the pack's checksum disagrees
    deep = _fsck(repo, read_data=100)
    assert f"{pack.name} damaged at offset {entry}" in _messages(deep)
    assert deep["packs_read"] == len(list((repo / "objects" / "pack").glob("*.pack")))


def test_json_shape(repo: Path, run_ketch: RunKetch) -> None:
    _big_pack(repo).with_suffix(".idx").unlink()
    out = run_ketch("fsck", "-d", repo, "--json", "-q")
    report = json.loads(out.stdout)
    assert out.returncode == 2 == report["exit_code"] and report["ok"] is False
    assert {"repository", "packs", "objects", "refs", "problems", "repairs", "seconds",
            "bytes_read", "objects_reachable"} <= report.keys()
    p = report["problems"][0]
    assert {"severity", "what", "message"} <= p.keys() and p["severity"] == "damaged"
    objs = [p for p in report["problems"] if p["what"] == "object"]
    assert objs and all(len(p["object"]) == 40 for p in objs)


def test_bad_input_is_one_line(tmp_path: Path, run_ketch: RunKetch) -> None:
    out = run_ketch("fsck", "-d", tmp_path / "nope")
    assert out.returncode == 2 and out.stderr.count(b"\n") == 1
    assert out.stderr.startswith(b"ketch: error: ")
    out = run_ketch("fsck", "-d", tmp_path, "--read-data=150")
    assert out.returncode == 2 and b"Traceback" not in out.stderr


def _records(repo: Path) -> list[dict]:
    with LocalRepository(str(repo)) as r:
        return [s.data for s in reportlog.history(r, "fsck")]


def test_each_check_is_kept_in_the_repository(repo: Path, run_ketch: RunKetch) -> None:
    first = json.loads(run_ketch("fsck", "-d", repo, "--read-data=50", "--json",
                                 check=True).stdout)
    [rec] = _records(repo)
    assert rec["ok"] is True and rec["exit_code"] == 0 and rec["errors"] == []
    assert rec["read_data"] == 50.0 and rec["quick"] is False
    assert [rec[k] for k in ("packs", "packs_read", "objects", "objects_reachable", "refs")] == [
        first[k] for k in ("packs", "packs_read", "objects", "objects_reachable", "refs")]
    assert rec["problems"] == 0 and rec["summary"].startswith("ok: ")
    # The second check sees the first's record (a ref, a pack), and adds its own.
    second = json.loads(run_ketch("fsck", "-d", repo, "--json", check=True).stdout)
    assert second["refs"] == first["refs"] + 1 and second["packs"] == first["packs"] + 1
    again = _records(repo)
    assert len(again) == 2 and again[1] == rec and again[0]["read_data"] == 0.0
    git(repo, "fsck", "--strict", "--no-dangling")

    _big_pack(repo).with_suffix(".idx").unlink()
    out = run_ketch("fsck", "-d", repo, "-q")
    assert out.returncode == 2
    damaged = _records(repo)[0]
    assert damaged["ok"] is False and damaged["exit_code"] == 2 and damaged["damaged"] > 0
    assert damaged["summary"].startswith("DAMAGED: ")
    assert damaged["errors"] and damaged["errors"][0].startswith("damaged: ")
    assert len(damaged["errors"]) == min(damaged["problems"], 10)


def test_a_record_that_cannot_be_kept_is_a_warning(repo: Path, run_ketch: RunKetch) -> None:
    """A ref lock a crashed writer left behind: the check is clean, says so,
    and says why no record was kept (exit 1)."""
    (repo / "refs" / "ketch").mkdir()
    (repo / "refs" / "ketch" / "fsck.lock").write_text("")
    out = run_ketch("fsck", "-d", repo, "--quick", "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 1 == report["exit_code"]
    [p] = report["problems"]
    assert p["severity"] == "warning" and p["what"] == "report"
    assert p["message"].startswith("fsck report not stored: cannot lock ref refs/ketch/fsck")
    assert _records(repo) == []


def test_run_as_root_the_record_stays_the_owners(repo: Path, run_ketch: RunKetch) -> None:
    """`sudo ketch fsck -d` on the backup server, in a machine's repository: the
    machine's forced-command server, running as its owner, must go on writing it."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to give a repository to another user")
    nobody = pwd.getpwnam("nobody")
    for p in [repo, *repo.rglob("*")]:
        os.lchown(p, nobody.pw_uid, nobody.pw_gid)
    run_ketch("fsck", "-d", repo, "--quick", check=True)
    assert len(_records(repo)) == 1
    assert {p.stat().st_uid for p in repo.rglob("*")} == {nobody.pw_uid}


def test_all_root_one_good_one_damaged(made: Path, tmp_path: Path, run_ketch: RunKetch) -> None:
    root = tmp_path / "root"
    shutil.copytree(made, root / "good")
    shutil.copytree(made, root / "bad")
    _big_pack(root / "bad").unlink()
    if os.geteuid() == 0:  # as on a backup server: each repository its machine user's
        nobody = pwd.getpwnam("nobody")
        for p in [root / "good", *(root / "good").rglob("*")]:
            os.lchown(p, nobody.pw_uid, nobody.pw_gid)
    out = run_ketch("fsck", "--all", root)
    assert out.returncode == 2
    text = out.stdout.decode()
    assert "good  ok" in text and "bad   DAMAGED" in text
    [good] = _records(root / "good")
    [bad] = _records(root / "bad")
    assert (good["exit_code"], bad["exit_code"]) == (0, 2)
    assert any("missing" in e for e in bad["errors"]), bad["errors"]
    git(root / "good", "fsck", "--strict", "--no-dangling")
    if os.geteuid() == 0:
        # What the record wrote (a pack, the ref, its reflog) is the owner's again.
        assert {p.stat().st_uid for p in (root / "good").rglob("*")} == {nobody.pw_uid}


def test_fsck_over_ssh_keeps_its_record_on_the_server(
        made: Path, tmp_path: Path, sshd: SshServer, run_ketch: RunKetch) -> None:  # noqa: F811
    """The server checks its repository; the client keeps the record there
    through update-ref, which an append-only key allows for refs/ketch/*."""
    repo = tmp_path / "srv" / "web1"
    shutil.copytree(made, repo)
    m = Machine.new(sshd, "fsck-record-append-only",
                    forced=f"{KETCH_SERVER} --append-only")
    for _ in range(2):
        out = run_ketch("fsck", "-r", m.url(repo), "--read-data", env=m.env)
        assert out.returncode == 0, out.stdout + out.stderr
    records = _records(repo)
    assert [(r["ok"], r["read_data"]) for r in records] == [(True, 100.0), (True, 100.0)]
    assert records[0]["refs"] == records[1]["refs"] + 1
    git(repo, "fsck", "--strict", "--no-dangling")


@pytest.mark.skipif(not parity.available(), reason="par2 is not installed")
def test_generate_then_repair_restores_the_identical_pack(tmp_path: Path,
                                                           run_ketch: RunKetch) -> None:
    data, repo = tmp_path / "data", tmp_path / "repo"
    data.mkdir()
    (data / "notes.txt").write_bytes(os.urandom(20_000).hex().encode())
    _ketch("init", "-d", repo)
    _ketch("save", "-d", repo, "-n", "small", data)
    out = run_ketch("fsck", "-d", repo, "-g")
    assert out.returncode == 0 and b"parity written for 1 pack" in out.stdout
    pack = _big_pack(repo)
    good = pack.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0xFF
    pack.write_bytes(raw)
    assert _fsck(repo)["exit_code"] == 2
    fixed = run_ketch("fsck", "-d", repo, "--repair")
    assert fixed.returncode == 0, fixed.stdout
    assert f"repaired: {pack.name}".encode() in fixed.stdout
    assert pack.read_bytes() == good
