"""Every repository command with `-r` (a local `ketch server`, no ssh), the
server's answers to broken or hostile input, and client-side failures."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from ketch.git.pack import entry_header
from tests.conftest import RunKetch
from tests.gitutil import git


def fsck(repo: Path) -> None:
    git(repo, "fsck", "--strict", "--no-dangling")


def test_every_command_takes_r(run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    r = f":{repo}"
    assert run_ketch("init", "-r", r, check=True).returncode == 0
    data = os.urandom(1_500_000)
    split = run_ketch("split", "-r", r, "-n", "blob", input=data, check=True)
    assert run_ketch("join", "-r", r, "blob", check=True).stdout == data
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"content\n")
    save = run_ketch("save", "-r", r, "-n", "s", "--json", tree, check=True)
    summary = json.loads(save.stdout)
    assert summary["bytes_sent"] > 0 and summary["bytes_received"] > 0
    assert run_ketch("cat-file", "-r", r, f"s/latest{tree}/f", check=True).stdout == b"content\n"
    commit = summary["commit"]
    assert run_ketch("cat-file", "-r", r, "-t", commit[:10], check=True).stdout == b"commit\n"
    listing = json.loads(run_ketch("ls", "-r", r, "--json", check=True).stdout)
    assert {e["name"] for e in listing} >= {"blob", "s"}
    # -r may also come before the command, like -d
    assert run_ketch("-r", r, "ls", "s", check=True).stdout.count(b"\n") == 2
    assert split.returncode == 0
    fsck(repo)


def test_bad_remotes_fail_in_one_line(run_ketch: RunKetch, tmp_path: Path) -> None:
    cases = [
        (["ls", "-r", f":{tmp_path / 'missing'}"], {}, "not a repository"),
        (["ls", "-r", "nohost.invalid:/x"], {"KETCH_RSH": "false"}, "lost"),
        (["ls", "-r", "http://x/y"], {}, "unexpected protocol"),
        (["ls", "-r", ":/x", "-d", str(tmp_path)], {}, "not both"),
        # No path: the server's default repository, here ~/.ketch, which is not there.
        (["init", "-r", ":"], {"HOME": str(tmp_path)}, "no default repository"),
    ]
    for args, env, why in cases:
        proc = run_ketch(*args, env=env)
        err = proc.stderr.decode()
        assert proc.returncode == 2, (args, err)
        assert why in err and "Traceback" not in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err


def _frame(type_num: int, data: bytes, *, bad_crc: bool = False, bad_id: bool = False) -> bytes:
    enc = entry_header(type_num, len(data)) + zlib.compress(data, 1)
    oid = hashlib.sha1(b"blob %d\0" % len(data) + data).digest()
    if bad_id:
        oid = hashlib.sha1(b"something else").digest()
    crc = zlib.crc32(enc) ^ (1 if bad_crc else 0)
    return struct.pack("!I", len(enc) + 24) + oid + struct.pack("!I", crc) + enc


def _session(repo: Path, requests: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "ketch", "server", "-d", repo],
                          input=requests, capture_output=True, timeout=60)


@pytest.mark.parametrize("fault", ["bad_crc", "bad_id", "half_frame"])
def test_server_keeps_only_complete_checked_objects(run_ketch: RunKetch, tmp_path: Path,
                                                    fault: str) -> None:
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    good = [os.urandom(5000) for _ in range(3)]
    stream = b"receive-objects-v2\n" + b"".join(_frame(3, d) for d in good)
    if fault == "half_frame":
        stream += _frame(3, b"never complete")[:30]
    else:
        stream += _frame(3, b"hostile", **{fault: True}) + struct.pack("!I", 0)
    proc = _session(repo, stream)
    assert proc.returncode != 0
    assert b"Traceback" not in proc.stderr
    # The complete, checked objects before the fault are kept; nothing else.
    for d in good:
        oid = hashlib.sha1(b"blob %d\0" % len(d) + d).hexdigest()
        assert git(repo, "cat-file", "-p", oid) == d
    assert not list((repo / "objects").glob("pack-tmp-*"))
    count = git(repo, "count-objects", "-v").decode()
    assert "in-pack: 3\n" in count, count
    fsck(repo)


@pytest.mark.parametrize("encoded, why", [
    (entry_header(6, 4) + b"\x05" + zlib.compress(b"\x05\x05\x90\x05"), b"not a whole object"),
    (entry_header(3, 5) + zlib.compress(b"hello") + b"junk", b"bytes follow"),
    (entry_header(3, 1000) + zlib.compress(bytes(50 << 20)), b"header says 1000"),
    (entry_header(3, 1 << 40) + zlib.compress(b"x"), b"allowed"),
    (b"\xb0" + b"\xff" * 3, b"truncated entry header"),
], ids=["delta", "trailing-bytes", "bomb", "huge-size", "cut-header"])
def test_server_refuses_malformed_entries(run_ketch: RunKetch, tmp_path: Path,
                                          encoded: bytes, why: bytes) -> None:
    """An entry that does not decode ends the session with the reason, and the
    objects before it are kept."""
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    good = os.urandom(5000)
    bad = (struct.pack("!I", len(encoded) + 24) + b"\x01" * 20
           + struct.pack("!I", zlib.crc32(encoded)) + encoded)
    proc = _session(repo, b"receive-objects-v2\n" + _frame(3, good) + bad + struct.pack("!I", 0))
    assert proc.returncode == 2
    assert b"Traceback" not in proc.stderr
    assert b"object refused: " in proc.stderr and why in proc.stderr, proc.stderr
    oid = hashlib.sha1(b"blob %d\0" % len(good) + good).hexdigest()
    assert git(repo, "cat-file", "-p", oid) == good
    count = git(repo, "count-objects", "-v").decode()
    assert "in-pack: 1\n" in count, count


def test_refs_never_point_at_missing_objects(run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    missing = "12" * 20
    proc = _session(repo, f"update-ref refs/heads/x\n{missing}\n\nquit\n".encode())
    assert b"\nerror " in proc.stdout and b"not in the repository" in proc.stdout
    assert git(repo, "for-each-ref") == b""
    proc = _session(repo, f"update-ref refs/heads/x\n{'0' * 40}\n\nquit\n".encode())
    assert b"\nerror " in proc.stdout
    proc = _session(repo, b"update-ref HEAD\n" + missing.encode() + b"\n\nquit\n")
    assert b"\nerror " in proc.stdout and b"only branches and tags" in proc.stdout


def test_unknown_command_does_not_end_the_session(run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    proc = _session(repo, b"frobnicate\nread-ref refs/heads/none\nhelp\nquit\n")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(b"\nerror unknown server command")
    assert b"Commands:\n" in out and b"    receive-objects-v2\n" in out and out.endswith(b"\nok\n")
