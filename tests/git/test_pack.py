"""The pack writer against git itself: git reads every object, `git index-pack`
writes the same idx, `git fsck --strict` is clean, a killed writer leaves a usable
repository."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from ketch.git import objects as gobj
from ketch.git.idx import PackIndex
from ketch.git.pack import PackWriter, encode_entry, entry_header
from tests.gitutil import git


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    r = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(r)], check=True)
    return r


def packs(repo: Path) -> list[Path]:
    return sorted((repo / "objects" / "pack").glob("*.pack"))


def sample_objects(n: int, seed: int = 1) -> list[bytes]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(r.randbytes(r.randint(0, 40000)))
        elif kind == 1:
            out.append((b"line %d of a text file\n" % i) * r.randint(0, 500))
        else:
            out.append(bytes(r.randint(0, 5000)))
    return out


def test_entry_header_sizes() -> None:
    assert entry_header(gobj.BLOB, 0) == b"\x30"
    assert entry_header(gobj.BLOB, 15) == b"\x3f"
    assert entry_header(gobj.BLOB, 16) == b"\xb0\x01"
    assert entry_header(gobj.TREE, 1 << 20) == b"\xa0\x80\x80\x04"


def test_git_reads_every_object_and_idx_is_identical(bare: Path, tmp_path: Path) -> None:
    datas = sample_objects(300)
    with PackWriter(str(bare / "objects")) as w:
        ids = [w.write(gobj.BLOB, d) for d in datas]
    [pack] = packs(bare)
    idx = pack.with_suffix(".idx")
    assert pack.name == "pack-" + PackIndex(idx).pack_sha.hex() + ".pack"
    subprocess.run(["git", "index-pack", "-o", str(tmp_path / "git.idx"), str(pack)], check=True,
                   capture_output=True)
    assert (tmp_path / "git.idx").read_bytes() == idx.read_bytes()
    batch = git(bare, "cat-file", "--batch", input=b"".join(i.hex().encode() + b"\n" for i in ids))
    pos = 0
    for oid, d in zip(ids, datas, strict=True):
        nl = batch.index(b"\n", pos)
        assert batch[pos:nl] == b"%s blob %d" % (oid.hex().encode(), len(d))
        assert batch[nl + 1 : nl + 1 + len(d)] == d
        pos = nl + 1 + len(d) + 1
    git(bare, "fsck", "--strict", "--no-dangling")


def test_no_object_is_written_twice(bare: Path) -> None:
    d = b"same content\n"
    with PackWriter(str(bare / "objects")) as w:
        a = w.write(gobj.BLOB, d)
        b = w.write(gobj.BLOB, d)
    assert a == b
    [pack] = packs(bare)
    assert len(PackIndex(pack.with_suffix(".idx"))) == 1
    # The existence callback stops a second session writing it again.
    with PackWriter(str(bare / "objects"), exists=lambda oid: oid == a) as w:
        w.write(gobj.BLOB, d)
    assert len(packs(bare)) == 1


def test_pack_limits_split_packs(bare: Path) -> None:
    datas = sample_objects(250, seed=2)
    with PackWriter(str(bare / "objects"), max_pack_objects=100) as w:
        for d in datas:
            w.write(gobj.BLOB, d)
    counts = sorted(len(PackIndex(p.with_suffix(".idx"))) for p in packs(bare))
    assert counts == sorted([100, 100, len(set(datas)) - 200])
    before = set(packs(bare))
    with PackWriter(str(bare / "objects"), max_pack_size=200_000) as w:
        for d in sample_objects(100, seed=3):
            w.write(gobj.BLOB, d)
    new = set(packs(bare)) - before
    assert len(new) > 1
    for p in new:
        # Limits are checked after each object, so a pack can pass it by one object.
        assert p.stat().st_size < 200_000 + 45_000
    git(bare, "fsck", "--strict", "--no-dangling")


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_levels_roundtrip_through_git(bare: Path, level: int) -> None:
    datas = sample_objects(30, seed=level)
    with PackWriter(str(bare / "objects"), level=level) as w:
        ids = [w.write(gobj.BLOB, d) for d in datas]
    for oid, d in zip(ids[:10], datas[:10], strict=True):
        assert git(bare, "cat-file", "blob", oid.hex()) == d


def test_incompressible_data_is_stored_not_deflated() -> None:
    rnd = random.Random(5).randbytes(8192)
    enc, _, shrank = encode_entry(gobj.BLOB, rnd, 0)
    assert not shrank
    body = enc[len(entry_header(gobj.BLOB, len(rnd))):]
    assert zlib.decompress(body) == rnd
    assert len(body) <= len(rnd) + 16


def test_random_stream_uses_store_after_a_few_chunks(bare: Path) -> None:
    r = random.Random(9)
    with PackWriter(str(bare / "objects")) as w:
        for _ in range(200):
            w.write(gobj.BLOB, r.randbytes(8192))
    [pack] = packs(bare)
    raw = pack.read_bytes()
    # Stored streams carry stored blocks (BTYPE 00) after the 2-byte zlib header
    # (78 01 from ketch's level 0; ISA-L's own fallback to stored says 78 5e).
    h = len(entry_header(gobj.BLOB, 8192))
    stored = sum(1 for _, _, off in PackIndex(pack.with_suffix(".idx")).iter_entries()
                 if raw[off + h] == 0x78 and raw[off + h + 2] & 0x06 == 0)
    assert stored > 150


def test_sigkill_mid_pack_leaves_usable_repository(bare: Path) -> None:
    script = textwrap.dedent(f"""
        import os, random, sys
        from ketch.git.pack import PackWriter
        from ketch.git import objects as gobj
        r = random.Random(1)
        w = PackWriter({str(bare / 'objects')!r})
        for i in range(100000):
            w.write(gobj.BLOB, r.randbytes(4096))
            if i == 2000:
                print("ready", flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"ready"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert packs(bare) == []  # no pack without its idx became visible
    git(bare, "fsck", "--strict", "--no-dangling")
    with PackWriter(str(bare / "objects")) as w:
        oid = w.write(gobj.BLOB, b"after the crash\n")
    assert git(bare, "cat-file", "blob", oid.hex()) == b"after the crash\n"
    git(bare, "fsck", "--strict", "--no-dangling")


def test_abort_keeps_the_complete_objects(bare: Path) -> None:
    datas = sample_objects(60, seed=4)
    w = PackWriter(str(bare / "objects"))
    oids = [w.write(gobj.BLOB, d) for d in datas[:30]]
    oids += w.write_many(gobj.BLOB, datas[30:])
    w.abort()
    [pack] = packs(bare)
    assert len(PackIndex(pack.with_suffix(".idx"))) == len(set(oids))
    for oid, d in zip(oids, datas, strict=True):
        assert git(bare, "cat-file", "blob", oid.hex()) == d
    git(bare, "fsck", "--strict", "--no-dangling")


def test_interrupts_at_random_moments_keep_valid_packs(bare: Path) -> None:
    """SIGINT or SIGTERM anywhere in a writer under stop_signals: what it handed
    over before the signal is in a valid pack, never a torn entry."""
    script = textwrap.dedent(f"""
        import random, sys
        from ketch.git.pack import PackWriter
        from ketch.git import objects as gobj
        from ketch.interrupt import stop_signals
        seed = int(sys.argv[1])
        r = random.Random(seed)
        done = []
        with stop_signals():
            w = PackWriter({str(bare / 'objects')!r}, max_pack_size=3_000_000)
            try:
                for i in range(100000):
                    if i == 50:
                        print("ready", flush=True)
                    if i % 3:
                        done.append(w.write(gobj.BLOB, r.randbytes(r.randint(0, 9000))))
                    else:
                        done += w.write_many(gobj.BLOB, [r.randbytes(70000) for _ in range(4)])
            except KeyboardInterrupt:
                w.abort()
        print("\\n".join(o.hex() for o in done))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    rnd = random.Random(5)
    for seed in range(8):
        p = subprocess.Popen([sys.executable, "-c", script, str(seed)], stdout=subprocess.PIPE,
                             env=env)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(rnd.uniform(0, 0.5))
        p.send_signal(signal.SIGINT if seed % 2 else signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        listed = out.split()
        check = subprocess.run(["git", "--git-dir", str(bare), "cat-file", "--batch-check"],
                               input=b"\n".join(listed) + b"\n", capture_output=True)
        assert b"missing" not in check.stdout
        assert [n for n in os.listdir(bare / "objects") if n.startswith("pack-tmp")] == []
        git(bare, "fsck", "--strict", "--no-dangling")


def test_a_held_section_on_another_thread_does_not_swallow_a_stop_signal() -> None:
    """Signals are the main thread's: a writer used from a worker thread must not
    hold Ctrl-C back (and then raise it in the worker, where nobody waits)."""
    import os
    import signal
    import threading

    from ketch.interrupt import held, stop_signals

    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with held():
                inside.set()
                release.wait(10)
        except BaseException as e:  # noqa: BLE001 - the test reports what escaped
            errors.append(e)

    t = threading.Thread(target=worker)
    with stop_signals():
        t.start()
        assert inside.wait(10)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes of this thread
                pass
            raised = False
        except KeyboardInterrupt:
            raised = True
        finally:
            release.set()
            t.join(10)
    assert raised, "the main thread was not interrupted"
    assert errors == [], errors
