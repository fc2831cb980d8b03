"""`resolve` replies compared byte for byte with bup 0.33's own server code.

The oracle runs bup's modules under the system python: for each request it
builds the request body the way bup's client would (a parent resolution made
by bup's resolve, then the path), then answers it exactly as
`bup.cmd.server.resolve` does, with a cold VFS cache, and prints both in hex.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import KetchError
from ketch.localrepo import LocalRepository
from ketch.remote.bupitem import BupItem, ResolveError, encode_resolution, read_resolution
from ketch.remote.bupvfs import resolve_reply
from ketch.vfs import VFS
from ketch.vint import read_bvec, read_vint, read_vuint, write_bvec
from tests import buputil
from tests.buputil import run_bup
from tests.gitutil import git

T0 = 1700000000
BUP_PYTHON = "/usr/bin/python3"
BUP_LIB = "/usr/lib/bup"

ORACLE = r"""
import io, json, sys
sys.path.insert(0, sys.argv[2])
from bup import git, vfs, vint
from bup.repo import LocalRepo

repo_dir = sys.argv[1].encode()
git.check_repo_or_die(repo_dir)
repo = LocalRepo(repo_dir)

def body_for(req):
    flags = req["flags"]
    body = io.BytesIO()
    if req["parent"] is not None:
        vfs.clear_cache()
        # As bup's client: a resolution it got earlier, sent back as-is.
        res = vfs.resolve(repo, bytes.fromhex(req["parent"]), want_meta=bool(flags & 1),
                          follow=req["parent_follow"])
        if req["trim"]:
            res = res[:-1]
        vfs.write_resolution(body, res)
    vint.write_bvec(body, bytes.fromhex(req["path"]))
    return body.getvalue()

def serve(flags, body):
    # bup.cmd.server.resolve, minus the connection.
    port = io.BytesIO(body)
    parent = vfs.read_resolution(port) if flags & 4 else None
    path = vint.read_bvec(port)
    out = io.BytesIO()
    try:
        res = list(vfs.resolve(repo, path, parent=parent, want_meta=bool(flags & 1),
                               follow=bool(flags & 2)))
    except vfs.IOError as ex:
        out.write(b"\x00")
        vfs.write_ioerror(out, ex)
    else:
        out.write(b"\x01")
        vfs.write_resolution(out, res)
    return out.getvalue()

results = []
for req in json.load(sys.stdin):
    body = body_for(req)
    vfs.clear_cache()
    try:
        reply, exc = serve(req["flags"], body).hex(), None
    except Exception as ex:
        reply, exc = None, type(ex).__name__
    results.append({"body": body.hex(), "reply": reply, "exc": exc})
json.dump(results, sys.stdout)
repo.close()
"""


def bup_exe() -> str:
    exe = buputil.bup_exe()
    if not os.path.isdir(os.path.join(BUP_LIB, "bup")):
        pytest.fail(f"bup is installed but its modules are not in {BUP_LIB}")
    return exe


@dataclass
class Sample:
    repo: Path
    src: Path

    @property
    def base(self) -> bytes:
        """The saved source directory in the latest save of branch t."""
        return b"/t/latest" + os.fsencode(self.src)


def build_sample(root: Path) -> Sample:
    src = root / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "emptydir").mkdir()
    files = {
        "a.txt": b"hello\n", "sub/f": b"sub file\n", "sub/deeper/d.txt": b"deep\n",
        "sp ace": b"space\n", "x.bup": b"mangled\n", "-x": b"before .bupm\n",
    }
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    with open(os.path.join(os.fsencode(src), b"caf\xe9"), "wb") as f:
        f.write(b"latin-1\n")
    (src / "big.bin").write_bytes(random.Random(7).randbytes(1_500_000))
    links = {
        "link": "a.txt", "dirlink": "sub", "dangling": "/nonexistent", "loop1": "loop2",
        "loop2": "loop1", "self": "self", "rootlink": "/", "uplink": "..",
        "deeplink": "sub/deeper", "filelink_slash": "a.txt/", "through_file": "a.txt/x",
        "abs_into": str(src / "sub"), "chain": "link",
    }
    for name, target in links.items():
        os.symlink(target, src / name)
    os.symlink("../a.txt", src / "sub" / "up_a")
    os.mkfifo(src / "fifo")
    repo = root / "repo"
    run_bup(repo, "init")
    run_bup(repo, "index", str(src))
    for when in (T0, T0, T0 + 300):
        run_bup(repo, "save", "-n", "t", "--date", str(when), str(src))
    run_bup(repo, "save", "-n", "other", "--date", str(T0 + 600), str(src / "sub"))
    run_bup(repo, "split", "-n", "sp", input=b"split data\n")
    git(repo, "tag", "mytag", "t~1")
    git(repo, "tag", "treetag", "t^{tree}")
    blob = git(repo, "rev-parse", "t:" + str(src).lstrip("/") + "/a.txt").strip()
    git(repo, "tag", "blobtag", blob.decode())
    return Sample(repo, src)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, git_env: None) -> Sample:
    bup_exe()
    return build_sample(tmp_path_factory.mktemp("bupvfs"))


@pytest.fixture(scope="module")
def vfs(sample: Sample) -> Iterator[VFS]:
    repo = LocalRepository(str(sample.repo))
    yield VFS(repo)
    repo.close()


@dataclass(frozen=True)
class Req:
    flags: int
    path: bytes
    parent: bytes | None = None
    parent_follow: bool = True
    trim: bool = False  # send the parent's resolution minus its last element

    def to_json(self) -> dict[str, Any]:
        return {"flags": self.flags | (4 if self.parent is not None else 0),
                "path": self.path.hex(),
                "parent": None if self.parent is None else self.parent.hex(),
                "parent_follow": self.parent_follow, "trim": self.trim}


@dataclass
class Answer:
    body: bytes
    reply: bytes | None
    exc: str | None


def oracle(sample: Sample, reqs: list[Req]) -> list[Answer]:
    proc = subprocess.run([BUP_PYTHON, "-c", ORACLE, str(sample.repo), BUP_LIB],
                          input=json.dumps([r.to_json() for r in reqs]).encode(),
                          capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"oracle failed: {proc.stderr.decode(errors='replace')}")
    return [Answer(bytes.fromhex(a["body"]),
                   None if a["reply"] is None else bytes.fromhex(a["reply"]), a["exc"])
            for a in json.loads(proc.stdout)]


def ours(vfs: VFS, req: Req, body: bytes) -> bytes:
    stream = io.BytesIO(body)

    def read(n: int) -> bytes:
        data = stream.read(n)
        if len(data) != n:
            raise EOFError("request body ran out")
        return data

    reply = resolve_reply(vfs, req.to_json()["flags"], read)
    assert stream.read() == b"", "request body not consumed"
    return reply


_ADDRESS = re.compile(rb"instance at 0x[0-9a-f]+")


def comparable(reply: bytes) -> tuple[Any, ...]:
    """An ioerror's message names Python object addresses: mask those out."""
    if reply[:1] != b"\x00":
        return (reply,)
    mask, pos = read_vuint(reply, 1)
    no, pos = read_vint(reply, pos)
    msg, pos = read_bvec(reply, pos)
    return (mask, no, _ADDRESS.sub(b"instance at 0x?", msg), reply[pos:])


def check(vfs: VFS, sample: Sample, reqs: list[Req]) -> list[Answer]:
    answers = oracle(sample, reqs)
    for req, ans in zip(reqs, answers, strict=True):
        assert ans.reply is not None, f"bup failed on {req}: {ans.exc}"
        assert comparable(ours(vfs, req, ans.body)) == comparable(ans.reply), req
    return answers


def _paths(sample: Sample) -> list[bytes]:
    base = sample.base
    inside = [
        b"", b"/", b"/a.txt", b"/a.txt/", b"/a.txt/x", b"/a.txt/x/y", b"/big.bin",
        b"/big.bin/", b"/caf\xe9", b"/sp ace", b"/x.bup", b"/-x", b"/fifo", b"/fifo/x",
        b"/sub", b"/sub/", b"/sub/.", b"/sub/deeper/d.txt", b"/sub/deeper/../f",
        b"/sub/../sub/./deeper", b"/sub/up_a", b"/sub/missing", b"/sub/missing/x",
        b"/emptydir", b"/emptydir/x", b"/link", b"/link/", b"/link/x", b"/chain",
        b"/dirlink", b"/dirlink/", b"/dirlink/f", b"/dirlink/deeper/d.txt",
        b"/deeplink/../f", b"/dangling", b"/dangling/", b"/dangling/x", b"/loop1",
        b"/loop1/", b"/loop1/x", b"/self", b"/rootlink", b"/rootlink/t",
        b"/uplink", b"/uplink/src", b"/filelink_slash", b"/through_file", b"/abs_into",
        b"/abs_into/f", b"/nope", b"//sub//deeper/", b"/.bupm",
    ]
    return [
        b"/", b".", b"./", b"/.", b"..", b"/..", b"/../..", b"t", b"/t", b"/t/", b"t/..",
        b"/nosuch", b"/nosuch/x", b"/.tag", b"/.tag/", b"/.tag/mytag", b"/.tag/mytag/",
        b"/.tag/treetag", b"/.tag/blobtag", b"/.tag/blobtag/", b"/.tag/blobtag/x",
        b"/.tag/nosuch", b"/.tag/mytag" + os.fsencode(sample.src) + b"/sub",
        b"/.tag/treetag" + os.fsencode(sample.src) + b"/a.txt",
        b"/t/latest", b"/t/latest/", b"/t/latest/.", b"/t/latest/..", b"/t/not-a-save",
        b"/t/2000-01-01-000000", b"/t/2000-01-01-000000/x", b"/other", b"/other/latest",
        b"/other/latest" + os.fsencode(sample.src) + b"/sub/up_a",
        b"/sp", b"/sp/latest", b"/sp/latest/", b"/sp/latest/data",
        b"/t/latest/tmp/..", b"/t/latest/nope/x",
    ] + [base + p for p in inside]


def test_paths_without_parent(vfs: VFS, sample: Sample) -> None:
    reqs = [Req(flags, p) for p in _paths(sample) for flags in range(4)]
    answers = check(vfs, sample, reqs)
    # The sample must exercise every outcome, or the comparison proves little.
    kinds = {a.reply[:1] for a in answers if a.reply is not None}
    assert kinds == {b"\x00", b"\x01"}
    replies = b"".join(a.reply or b"" for a in answers)
    for kind in (b"Chunky", b"FakeLink", b"Commit", b"RevList", b"Tags"):
        assert kind in replies
    errnos = {comparable(a.reply)[1] for a in answers if a.reply and a.reply[0] == 0}
    assert errnos == {20, 40}  # ENOTDIR, ELOOP


def test_save_names_with_duplicates(vfs: VFS, sample: Sample) -> None:
    names = [n for n, _, _ in vfs.saves(b"t")]
    assert names[1].endswith(b"-1") and names[2].endswith(b"-0")
    reqs = [Req(flags, b"/t/" + n + suffix) for n in names
            for suffix in (b"", b"/", os.fsencode(sample.src) + b"/sub")
            for flags in (0, 1, 3)]
    reqs += [Req(1, b"/t/" + names[1][:-2])]  # the bare name of a duplicate
    check(vfs, sample, reqs)


def test_relative_to_parent(vfs: VFS, sample: Sample) -> None:
    base = sample.base
    parents = [b"/", b"/t", b"/t/latest", base, base + b"/sub", base + b"/dirlink",
               b"/.tag/mytag", b"/.tag"]
    rel = [b"a.txt", b"sub", b"sub/deeper/", b"..", b"../..", b"../../../..", b".", b"./",
           b"link", b"dirlink/f", b"missing", b"missing/x", b"a.txt/x", b"a.txt/",
           b"loop1", b"self/", b"rootlink", b"dangling", b"f", b"up_a", b"/t/latest",
           b"latest", b"mytag", b"t"]
    reqs = [Req(flags, p, parent) for parent in parents for p in rel for flags in range(4)]
    # A one-element parent is the only one bup can name in its error messages.
    deep = base.lstrip(b"/")
    reqs += [Req(flags, deep + p, b"/") for p in (b"/loop1", b"/a.txt/x", b"/a.txt/", b"/fifo/")
             for flags in range(4)]
    answers = oracle(sample, reqs)
    compared = 0
    for req, ans in zip(reqs, answers, strict=True):
        if ans.reply is None:
            # bup's server dies formatting its ENOTDIR/ELOOP message with a
            # parent of more than one element; we send the ioerror it meant.
            assert ans.exc == "TypeError", (req, ans.exc)
            reply = ours(vfs, req, ans.body)
            assert reply[0] == 0 and comparable(reply)[1] in (20, 40), req
            continue
        assert comparable(ours(vfs, req, ans.body)) == comparable(ans.reply), req
        compared += 1
    assert compared > len(reqs) // 2
    named = [a.reply for a in answers if a.reply and a.reply[0] == 0 and b"relative" in a.reply]
    assert len(named) >= 8


def test_parent_as_restore_sends_it(vfs: VFS, sample: Sample) -> None:
    """bup restore's try_resolve: resolve without following, then follow the
    final symlink relative to everything before it (want_meta, follow)."""
    base = sample.base
    reqs = []
    for name in (b"link", b"dirlink", b"dangling", b"chain", b"rootlink", b"uplink",
                 b"abs_into", b"deeplink", b"sub/up_a", b"a.txt", b"sub"):
        leaf = name.rsplit(b"/", 1)[-1]
        for flags in (1, 3, 0, 2):
            reqs.append(Req(flags, leaf, base + b"/" + name, parent_follow=False, trim=True))
    reqs.append(Req(3, b"latest", b"/t/latest", parent_follow=False, trim=True))
    check(vfs, sample, reqs)


def test_parent_that_is_not_a_directory(vfs: VFS, sample: Sample) -> None:
    reqs = [Req(flags, b"x", sample.base + b"/a.txt") for flags in (0, 1)]
    reqs += [Req(1, b"x", b"/t/latest", parent_follow=False)]  # a FakeLink parent
    answers = oracle(sample, reqs)
    for req, ans in zip(reqs[:2], answers[:2], strict=True):
        assert ans.reply is not None
        assert comparable(ours(vfs, req, ans.body)) == comparable(ans.reply)
    assert answers[2].exc == "AssertionError"
    with pytest.raises(ResolveError, match="not a directory item"):
        ours(vfs, reqs[2], answers[2].body)


def test_roundtrip_of_parent_items(vfs: VFS, sample: Sample) -> None:
    """Parent items come back in the reply re-encoded, as bup re-encodes them."""
    req = Req(3, b".", sample.base + b"/sub/deeper")
    (ans,) = oracle(sample, [req])
    stream = io.BytesIO(ans.body)
    parent = read_resolution(lambda n: stream.read(n))
    assert b"\x01" + encode_resolution(parent) == ans.reply
    assert all(isinstance(item, BupItem) for _, item in parent)


@pytest.mark.parametrize("flags, body, match", [
    (0, write_bvec(b""), "Empty resolve path"),
    (4, b"\x01" + write_bvec(b"") + b"\x02", "item-present"),
    (4, b"\x01" + write_bvec(b"") + b"\x01" + write_bvec(b"Bogus") + b"\x00",
     "unknown item kind"),
    (4, b"\x01" + write_bvec(b"") + b"\x01" + write_bvec(b"Item") + b"\x00"
     + write_bvec(b"short") + b"\x00", "not 20"),
    (4, b"\x01" + write_bvec(b"") + b"\x01" + write_bvec(b"Root") + b"\x01\x00", "empty metadata"),
    (4, b"\x01" + write_bvec(b"") + b"\x01" + write_bvec(b"Root") + b"\x00\xa4\x03"
     + write_bvec(b"x"), "start at the root"),
    (0, b"\x85", "truncated"),
    (0, b"\xff" * 12, "overlong"),
])
def test_malformed_requests(vfs: VFS, flags: int, body: bytes, match: str) -> None:
    def read(n: int) -> bytes:
        got = stream.read(n)
        if len(got) != n:
            raise ResolveError("resolve request truncated")
        return got

    stream = io.BytesIO(body)
    with pytest.raises(KetchError, match=match):
        resolve_reply(vfs, flags, read)
