"""`ketch server` against a hostile client: raw bytes on the server's stdin.

Each case runs the real server process (`python -m ketch server`) on a copy
of a small repository, speaks bytes no ketch client would send, and checks
what the server answers, how it exits, and that the repository is unchanged
(refs, pack files) and `git fsck --strict` clean afterwards. One case goes
through the real sshd, as an attacker holding a backup key would.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from ketch.git import objects as gobj
from ketch.remote.protocol import u32
from tests.conftest import _subprocess_env
from tests.gitutil import git
from tests.services.sshd import SshServer

HEX0 = b"0" * 40


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with one save (made once per module; tests get copies)."""
    base = tmp_path_factory.mktemp("hostile-server")
    tree = base / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"hello\n")
    (tree / "sub" / "b.bin").write_bytes(bytes(range(256)) * 300)
    repo = base / "repo"
    for args in (["init", "-d", str(repo)], ["save", "-d", str(repo), "-n", "host", "-q",
                                              str(tree)]):
        subprocess.run([sys.executable, "-m", "ketch", *args], check=True,
                       env=_subprocess_env(None), capture_output=True)
    return repo


@pytest.fixture
def repo(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(pristine, copy, symlinks=True)
    return copy


def state(repo: Path) -> tuple[bytes, list[str]]:
    """What a hostile client must not change: the refs and the pack files."""
    packs = sorted(p.name for p in (repo / "objects" / "pack").iterdir()
                   if p.suffix in (".pack", ".idx"))
    return git(repo, "for-each-ref"), packs


def fsck_clean(repo: Path) -> None:
    res = subprocess.run(["git", "--git-dir", str(repo), "fsck", "--strict", "--no-dangling"],
                         capture_output=True)
    assert res.returncode == 0, res.stdout + res.stderr
    said = [ln for ln in res.stdout.splitlines() + res.stderr.splitlines()
            if not ln.startswith(b"notice: HEAD points to an unborn branch")]
    assert not said, said


def serve(repo: Path, data: bytes, *args: str) -> tuple[int, bytes, str]:
    """Feed `data` to `ketch server -d REPO` and end the stream: (exit, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "ketch", "server", "-d", str(repo), *args],
                          input=data, capture_output=True, env=_subprocess_env(None),
                          timeout=60)
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    return proc.returncode, proc.stdout, err


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ketch: error: "), err
    return lines[0]


def head(repo: Path) -> bytes:
    return git(repo, "rev-parse", "refs/heads/host").strip()


def entry(type_num: int, data: bytes, *, size: int | None = None) -> bytes:
    """A pack entry: type+size header (size may lie), then zlib of `data`."""
    n = len(data) if size is None else size
    first = (type_num << 4) | (n & 0x0F)
    n >>= 4
    out = bytearray()
    while n:
        out.append(first | 0x80)
        first = n & 0x7F
        n >>= 7
    out.append(first)
    return bytes(out) + zlib.compress(data)


def frame(oid: bytes, encoded: bytes, *, length: int | None = None,
          crc: int | None = None) -> bytes:
    body = oid + u32(zlib.crc32(encoded) if crc is None else crc) + encoded
    return u32(len(body) if length is None else length) + body


# -- rev-list --------------------------------------------------------------------


def test_rev_list_refuses_options(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "written-by-git"
    opts = [b"--output=" + str(out).encode(), b"-n1", b"--all", b"--exec=touch " + str(out).encode()]
    before = state(repo)
    rc, stdout, err = serve(repo, b"".join(b"rev-list\n\n\n" + opt + b"\nrefs/heads/host\n\n"
                                           for opt in opts) + b"quit\n")
    assert rc == 0, err
    assert stdout == b"\nerror rev-list: options are not allowed\n" * len(opts)
    assert not out.exists()
    assert state(repo) == before


def test_rev_list_format_cannot_smuggle_an_option(repo: Path, tmp_path: Path) -> None:
    """The format line becomes part of --pretty=format:..., never a separate argument."""
    out = tmp_path / "written-by-git"
    rc, stdout, err = serve(repo, b"rev-list\n\n --output=" + str(out).encode()
                            + b"\nrefs/heads/host\n\nquit\n")
    assert rc == 0, err
    assert stdout.endswith(b"\nok\n")
    assert b"--output=" in stdout  # git printed it as the format text
    assert not out.exists()


# -- send-index --------------------------------------------------------------------


BAD_INDEX_NAMES = [b"../x.idx", b"/etc/passwd", b"../../../../etc/passwd", b"..idx", b"x.idx",
                   b"pack-zz.idx", b"midx-1.midx", b"pack-" + b"a" * 40 + b".idx\0",
                   b"pack-\0.idx", b"pack-" + b"\xff" * 40 + b".idx", b"pack-" + b"A" * 40 + b".idx"]


def test_send_index_refuses_names_outside_the_pack_directory(repo: Path) -> None:
    (repo / "objects" / "x.idx").write_bytes(b"secret")
    rc, stdout, err = serve(repo, b"".join(b"send-index " + n + b"\n" for n in BAD_INDEX_NAMES)
                            + b"quit\n")
    assert rc == 0, err
    replies = stdout.split(b"\n")[1::2]
    assert len(replies) == len(BAD_INDEX_NAMES), stdout
    assert all(r.startswith((b"error bad index name: ", b"error NUL byte in the command: "))
               for r in replies), stdout
    assert b"secret" not in stdout and b"root:" not in stdout
    assert b"b'" not in stdout  # said as text, not a Python repr


def test_send_index_of_a_real_index_still_works(repo: Path) -> None:
    [idx] = (repo / "objects" / "pack").glob("pack-*.idx")
    rc, stdout, err = serve(repo, b"send-index " + idx.name.encode() + b"\nquit\n")
    assert rc == 0, err
    assert stdout == u32(idx.stat().st_size) + idx.read_bytes() + b"\nok\n"


# -- update-ref of an incomplete commit --------------------------------------------


def test_update_ref_refuses_a_commit_whose_tree_is_missing(repo: Path) -> None:
    missing_tree = hashlib.sha1(b"no such tree").digest()
    commit = gobj.encode_commit(missing_tree, [bytes.fromhex(head(repo).decode())],
                                b"Evil <e@x>", 1700000000, b"+0000", b"evil\n")
    oid = gobj.object_id(gobj.COMMIT, commit)
    refs_before = git(repo, "for-each-ref")
    rc, stdout, err = serve(repo, b"receive-objects-v2\n" + frame(oid, entry(gobj.COMMIT, commit))
                            + u32(0) + b"update-ref refs/heads/host\n" + oid.hex().encode()
                            + b"\n" + head(repo) + b"\nupdate-ref refs/heads/new\n"
                            + oid.hex().encode() + b"\n\nquit\n")
    assert rc == 0, err
    replies = stdout.split(b"\nok\n", 1)[1]  # after the pack's names
    assert replies.count(b"\nerror ") == 2, replies
    assert missing_tree.hex().encode() in replies
    assert git(repo, "for-each-ref") == refs_before
    fsck_clean(repo)


# -- bad object frames ---------------------------------------------------------------


def _blob_frame() -> tuple[bytes, bytes]:
    data = b"a blob nobody has\n"
    return gobj.object_id(gobj.BLOB, data), entry(gobj.BLOB, data)


def _bad_frames() -> dict[str, tuple[bytes, str]]:
    oid, good = _blob_frame()
    base = bytes(20)
    ofs_delta = bytes([(6 << 4) | 5, 1]) + zlib.compress(b"\x05\x05\x90\x05")
    ref_delta = bytes([(7 << 4) | 5]) + base + zlib.compress(b"\x05\x05\x90\x05")
    return {
        "ofs-delta": (frame(oid, ofs_delta), "not a whole object"),
        "ref-delta": (frame(oid, ref_delta), "not a whole object"),
        "oversize length": (u32((1 << 31) + 1) + b"x" * 100, "bad object frame length"),
        "declared 1 GiB, body short": (frame(oid, good, length=1 << 30), "connection to client lost"),
        "crc mismatch": (frame(oid, good, crc=1), "CRC mismatch"),
        "header says bigger": (frame(oid, entry(gobj.BLOB, b"a blob nobody has\n",
                                                 size=1 << 30)), "refused"),
        "wrong id": (frame(hashlib.sha1(b"other").digest(), good), "does not match"),
        "bytes after the zlib stream": (frame(oid, good + b"junk"), "refused"),
        "bad type 5": (frame(oid, bytes([(5 << 4) | 1]) + zlib.compress(b"x")), "refused"),
        "endless size varint": (frame(oid, b"\xb1" + b"\xff" * 40), "refused"),
    }


@pytest.mark.parametrize("case", list(_bad_frames()))
def test_bad_object_frames_end_the_session_with_one_line(repo: Path, case: str) -> None:
    data, says = _bad_frames()[case]
    before = state(repo)
    rc, stdout, err = serve(repo, b"receive-objects-v2\n" + data)
    assert rc == 2, err
    line = one_error_line(err)
    assert says in line, line
    assert state(repo) == before


def test_a_good_frame_before_a_bad_one_is_kept_whole(repo: Path) -> None:
    oid, good = _blob_frame()
    rc, _, err = serve(repo, b"receive-objects-v2\n" + frame(oid, good)
                       + frame(oid, good, crc=7))
    assert rc == 2, err
    assert "CRC mismatch" in one_error_line(err)
    assert git(repo, "cat-file", "-p", oid.hex()) == b"a blob nobody has\n"
    fsck_clean(repo)


# -- garbage, unknown commands --------------------------------------------------------


def test_garbage_and_unknown_commands_get_an_error_and_the_session_goes_on(repo: Path) -> None:
    before = state(repo)
    rc, stdout, err = serve(repo, b"\x00\xff\xfe garbage\nfrobnicate --all\nread-ref "
                            b"refs/heads/host\nquit\ntrailing garbage \x00\n")
    assert rc == 0, err
    assert stdout == (b"\nerror unknown server command: \\x00\\xff\\xfe garbage\n"
                      b"\nerror unknown server command: frobnicate --all\n"
                      + head(repo) + b"\n\nok\n")
    assert state(repo) == before


def test_a_line_without_end_is_refused(repo: Path) -> None:
    before = state(repo)
    rc, stdout, err = serve(repo, b"help" + b"x" * (1 << 17))
    assert rc == 2, err
    assert "longer than 65536 bytes" in one_error_line(err)
    assert state(repo) == before


MALFORMED = [
    b"read-ref ../../../../etc/passwd\n", b"read-ref /etc/passwd\n",
    b"cat-batch\n../../../../etc/passwd\n/etc/passwd\n\n",
    b"update-ref refs/heads/../../../x\n" + b"1" * 40 + b"\n\n",
    b"update-ref /etc/x\n" + b"1" * 40 + b"\n\n",
    b"update-ref refs/heads/x\nnot hex\n\n", b"update-ref refs/heads/x\n\xff\xfe\n\n",
    b"update-ref refs/heads/x\x00y\n" + b"1" * 40 + b"\n\n",
    b"gc\n" + b"[" * 60000 + b"\n", b"gc\n\xff\n",
    b"set-dir \x00\n", b"init-dir NEW\x00\n", b"set-dir /nonexistent\n",
]


def test_malformed_requests_are_refused_and_the_session_goes_on(repo: Path,
                                                                tmp_path: Path) -> None:
    before = state(repo)
    new = str(tmp_path / "new").encode()
    rc, stdout, err = serve(repo, b"".join(MALFORMED).replace(b"NEW", new)
                            + b"read-ref refs/heads/host\nquit\n")
    assert rc == 0, err
    assert stdout.count(b"\nerror ") == len(MALFORMED), stdout
    assert stdout.endswith(b"\n" + head(repo) + b"\n\nok\n"), stdout
    assert b"root:" not in stdout and b"b'" not in stdout
    assert not (tmp_path / "new").exists()
    assert state(repo) == before
    fsck_clean(repo)


@pytest.mark.parametrize("request_", [
    b"refs 2 x\n\n", b"resolve zz\n",
    b"resolve 5\n\x05" + b"\xff" * 5, b"cat-batch\nab\n",
])
def test_requests_that_break_the_stream_end_the_session(repo: Path, request_: bytes) -> None:
    before = state(repo)
    rc, stdout, err = serve(repo, request_)
    assert rc == 2, err
    one_error_line(err)
    assert state(repo) == before


# -- through the real sshd -------------------------------------------------------------


def test_hostile_client_over_ssh(sshd: SshServer, repo: Path, tmp_path: Path) -> None:
    """An attacker with a backup key (forced command, --restrict-to, --append-only)."""
    server = " ".join(["env", f"PYTHONPATH={_subprocess_env(None)['PYTHONPATH']}",
                       sys.executable, "-m", "ketch", "server", "--restrict-to", str(repo),
                       "--append-only"])
    key = sshd.new_key("hostile-client", forced_command=server)
    out = tmp_path / "written-by-git"
    oid, good = _blob_frame()
    data = (b"send-index ../../../../etc/passwd\n"
            b"rev-list\n\n\n--output=" + str(out).encode() + b"\n\n"
            b"set-dir ../\nset-dir /etc\n"
            b"update-ref refs/heads/host\n" + HEX0 + b"\n" + head(repo) + b"\n"
            b"receive-objects-v2\n" + frame(oid, good, crc=5))
    before = state(repo)
    res = subprocess.run([*sshd.ssh_argv(key), sshd.host, "anything"], input=data,
                         capture_output=True, timeout=60)
    assert res.returncode == 2, res.stderr
    replies = res.stdout.split(b"\nerror ")[1:]
    assert [r.split(b":")[0] for r in replies] == [
        b"bad index name", b"rev-list", b"../", b"/etc", b"deleting refs over the wire is not "
        b"allowed\n"], res.stdout
    assert b"root:" not in res.stdout
    assert res.stderr.decode().splitlines()[-1].startswith("ketch: error: object "), res.stderr
    assert not out.exists()
    assert state(repo) == before
    fsck_clean(repo)
