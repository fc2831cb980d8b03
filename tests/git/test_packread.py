"""PackFile against git itself: every object of packs that git wrote (OFS_DELTA
chains up to depth 50, REF_DELTA, thin packs whose bases live elsewhere) must read
back exactly as `git cat-file --batch` shows it."""

from __future__ import annotations

import hashlib
import random
import struct
import subprocess
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dulwich.pack import create_delta
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.errors import CorruptObject
from ketch.git import objects as gobj
from ketch.git.delta import BadDelta, apply_delta
from ketch.git.entry import OFS_DELTA, REF_DELTA, CorruptPack
from ketch.git.idx import PackIndex, write_idx_v2
from ketch.git.packread import MissingDeltaBase, ObjectIdMismatch, PackFile
from tests.gitutil import git


def init_bare(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
    return path


def history_stream(n_commits: int, seed: int = 7) -> bytes:
    """A fast-import stream whose files change a little per commit, so a repack
    deltifies them into long chains."""
    r = random.Random(seed)
    big = bytearray(r.randbytes(60_000))
    text = [b"line %d %s\n" % (i, r.randbytes(8).hex().encode()) for i in range(2000)]
    out = []
    for c in range(n_commits):
        for _ in range(3):
            pos = r.randrange(len(big) - 100)
            big[pos : pos + 20] = r.randbytes(20)
        text.insert(r.randrange(len(text)), b"inserted at commit %d\n" % c)
        files = {
            b"big.bin": bytes(big),
            b"doc.txt": b"".join(text),
            b"dir/small-%d" % (c % 7): b"small file %d\n" % c,
            b"empty": b"",
            b"zeros": bytes(70_000 + c),
        }
        out.append(b"commit refs/heads/main\n")
        out.append(b"committer T <t@e.x> %d +0000\n" % (1_700_000_000 + c))
        msg = b"commit %d\n" % c
        out.append(b"data %d\n%s" % (len(msg), msg))
        for name, data in files.items():
            out.append(b"M 100644 inline %s\ndata %d\n%s\n" % (name, len(data), data))
        out.append(b"\n")
    out.append(b"tag v1\nfrom refs/heads/main\ntagger T <t@e.x> 1700000000 +0000\ndata 4\ntag\n")
    return b"".join(out)


def cat_all(repo: Path, oids: list[bytes]) -> dict[bytes, tuple[int, bytes]]:
    """What git says each object is, via one `git cat-file --batch`."""
    stdin = b"".join(o.hex().encode() + b"\n" for o in oids)
    out = git(repo, "cat-file", "--batch", input=stdin)
    result: dict[bytes, tuple[int, bytes]] = {}
    pos = 0
    for oid in oids:
        nl = out.index(b"\n", pos)
        hexid, kind, size_s = out[pos:nl].split(b" ")
        assert bytes.fromhex(hexid.decode()) == oid
        size = int(size_s)
        result[oid] = (gobj.TYPE_NUMS[kind], out[nl + 1 : nl + 1 + size])
        pos = nl + 1 + size + 1
    return result


def all_ids(pf: PackFile) -> list[bytes]:
    # Not bytes(pf.index.ids[i]): numpy's S20 drops trailing NUL bytes.
    return [oid for oid, _, _ in pf.index.iter_entries()]


def only_pack(repo: Path) -> Path:
    (pack,) = sorted((repo / "objects" / "pack").glob("*.pack"))
    return pack


def entry_types(pf: PackFile) -> dict[int, int]:
    """How many entries of each raw pack type the pack has, from the entry headers."""
    counts: dict[int, int] = {}
    for offset, _ in pf.index.offsets_sorted():
        t = (pf._map[offset] >> 4) & 7
        counts[t] = counts.get(t, 0) + 1
    return counts


def max_depth(repo: Path, pack: Path) -> int:
    out = git(repo, "verify-pack", "-v", str(pack.with_suffix(".idx"))).decode()
    # lines like "chain length = 12: 3 objects"
    depths = [
        int(line.split()[3].rstrip(":"))
        for line in out.splitlines()
        if line.startswith("chain length")
    ]
    return max(depths)


@pytest.fixture(scope="module")
def history_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = init_bare(tmp_path_factory.mktemp("hist") / "r.git")
    git(repo, "fast-import", "--quiet", input=history_stream(60))
    git(repo, "repack", "-adf", "--depth=50", "--window=250")
    return repo


def assert_pack_matches_git(repo: Path, pf: PackFile) -> None:
    oids = all_ids(pf)
    expected = cat_all(repo, oids)
    for oid in oids:
        assert pf.read(oid, verify=True) == expected[oid], oid.hex()
        offset = pf.index.find_offset(oid)
        assert offset is not None
        t, data = expected[oid]
        assert pf.header_at(offset) == (t, len(data))
    seen = {oid: (t, data) for oid, t, data in pf.iter_objects(verify=True)}
    assert seen == expected


def test_ofs_delta_pack_matches_git(history_repo: Path) -> None:
    pack = only_pack(history_repo)
    assert max_depth(history_repo, pack) >= 40  # the chains really are long
    with PackFile(pack) as pf:
        types = entry_types(pf)
        assert types.get(OFS_DELTA, 0) > 100 and REF_DELTA not in types
        assert_pack_matches_git(history_repo, pf)


def test_fresh_packfile_each_object_cold_cache(history_repo: Path) -> None:
    # Reading in id order (not pack order) with a tiny cache: every chain is
    # resolved from scratch.
    pack = only_pack(history_repo)
    with PackFile(pack, cache_bytes=1000) as pf:
        oids = all_ids(pf)
        expected = cat_all(history_repo, oids)
        for oid in reversed(oids):
            assert pf.read(oid) == expected[oid]


def test_header_at_without_cache_matches_batch_check(history_repo: Path) -> None:
    pack = only_pack(history_repo)
    with PackFile(pack) as pf:
        oids = all_ids(pf)
        stdin = b"".join(o.hex().encode() + b"\n" for o in oids)
        out = git(history_repo, "cat-file", "--batch-check", input=stdin).splitlines()
        for oid, line in zip(oids, out, strict=True):
            _, kind, size = line.split()
            assert pf.header(oid) == (gobj.TYPE_NUMS[kind], int(size))
        assert pf.header(b"\x01" * 20) is None
        assert pf.read(b"\x01" * 20) is None


def test_ref_delta_pack_matches_git(tmp_path: Path) -> None:
    repo = init_bare(tmp_path / "r.git")
    git(repo, "fast-import", "--quiet", input=history_stream(25, seed=3))
    git(repo, "-c", "repack.useDeltaBaseOffset=false", "repack", "-adf", "--depth=50")
    with PackFile(only_pack(repo)) as pf:
        types = entry_types(pf)
        assert types.get(REF_DELTA, 0) > 50 and OFS_DELTA not in types
        assert_pack_matches_git(repo, pf)


def thin_pack(repo: Path, out_dir: Path, revs: bytes) -> Path:
    """A thin pack (REF_DELTAs against objects outside it) with an idx.

    git will not index a thin pack, so the idx is taken from the pack that
    `index-pack --fix-thin` makes: that appends the missing bases at the end and
    leaves every original entry (and its CRC) where it was.
    """
    data = git(repo, "pack-objects", "--thin", "--stdout", "--revs", input=revs)
    fixed_dir = init_bare(out_dir / "fix.git")
    fixed = fixed_dir / "fixed.pack"
    # --fix-thin needs the bases, so index inside the source repo's object store.
    subprocess.run(
        ["git", "--git-dir", str(repo), "index-pack", "--fix-thin", "--stdin", str(fixed)],
        input=data,
        check=True,
        capture_output=True,
    )
    idx = PackIndex(fixed.with_suffix(".idx"))
    try:
        entries = [(o, c, off) for o, c, off in idx.iter_entries() if off < len(data) - 20]
    finally:
        idx.close()
    (count,) = struct.unpack(">I", data[8:12])
    assert len(entries) == count
    pack = out_dir / "thin.pack"
    pack.write_bytes(data)
    with open(out_dir / "thin.idx", "wb") as f:
        write_idx_v2(f, entries, data[-20:])
    return pack


def test_thin_pack_resolves_bases_through_callback(tmp_path: Path) -> None:
    repo = init_bare(tmp_path / "r.git")
    # fast-import deltifies each version against the previous one, so the newer
    # half of history has deltas against objects in the older half.
    git(
        repo,
        "-c",
        "fastimport.unpackLimit=1",
        "fast-import",
        "--quiet",
        input=history_stream(12, seed=5),
    )
    tip = git(repo, "rev-parse", "main").strip()
    old = git(repo, "rev-parse", "main~6").strip()
    pack = thin_pack(repo, tmp_path, tip + b"\n^" + old + b"\n")

    full = PackFile(only_pack(repo))
    calls: list[bytes] = []

    def resolve(oid: bytes) -> tuple[int, bytes]:
        calls.append(oid)
        got = full.read(oid)
        assert got is not None
        return got

    with PackFile(pack, resolve_base=resolve) as pf:
        assert REF_DELTA in entry_types(pf)
        assert_pack_matches_git(repo, pf)
        assert calls and all(oid not in pf.index for oid in calls)

    # The callback can also come with each read, and the idx as a path.
    with PackFile(pack, str(pack.with_suffix(".idx"))) as pf:
        with pytest.raises(MissingDeltaBase, match="not in this pack"):
            for _ in pf.iter_objects():
                pass
        for oid, expected in cat_all(repo, all_ids(pf)).items():
            assert pf.read(oid, resolve_base=resolve) == expected
            assert pf.header(oid, resolve_base=resolve) == (expected[0], len(expected[1]))
    full.close()


# -- packs built by hand, for cases git does not produce ---------------------


def entry(type_num: int, size: int, body: bytes, extra: bytes = b"") -> bytes:
    c = (type_num << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(c | 0x80)
        c = size & 0x7F
        size >>= 7
    out.append(c)
    return bytes(out) + extra + body


def ofs_bytes(dist: int) -> bytes:
    out = [dist & 0x7F]
    dist >>= 7
    while dist:
        dist -= 1
        out.append(0x80 | (dist & 0x7F))
        dist >>= 7
    return bytes(reversed(out))


def write_pack(path: Path, entries: list[tuple[bytes, bytes]], version: int = 2) -> Path:
    """Write (oid, encoded entry) pairs as a pack plus idx; returns the pack path."""
    body = bytearray(struct.pack(">4sII", b"PACK", version, len(entries)))
    rows = []
    for oid, enc in entries:
        rows.append((oid, zlib.crc32(enc), len(body)))
        body += enc
    sha = hashlib.sha1(body).digest()
    path.write_bytes(bytes(body) + sha)
    with open(path.with_suffix(".idx"), "wb") as f:
        write_idx_v2(f, rows, sha)
    return path


def blob_entry(data: bytes, z: bytes | None = None) -> tuple[bytes, bytes]:
    return gobj.object_id(gobj.BLOB, data), entry(
        gobj.BLOB, len(data), zlib.compress(data) if z is None else z
    )


def test_handmade_pack_is_valid_for_git(tmp_path: Path) -> None:
    # The helper itself must write packs git accepts, or the tests below prove nothing.
    repo = init_bare(tmp_path / "r.git")
    pack = write_pack(tmp_path / "p.pack", [blob_entry(b"hello\n")])
    git(repo, "index-pack", "--stdin", input=pack.read_bytes())
    assert git(repo, "cat-file", "-p", gobj.object_id(gobj.BLOB, b"hello\n").hex()) == b"hello\n"


def test_zlib_stream_longer_than_first_guess(tmp_path: Path) -> None:
    # A full flush after every byte makes the stream many times longer than the
    # data, so the reader must keep feeding input until the stream ends.
    data = random.Random(1).randbytes(3000)
    c = zlib.compressobj()
    z = b"".join(c.compress(data[i : i + 1]) + c.flush(zlib.Z_FULL_FLUSH) for i in range(len(data)))
    z += c.flush()
    assert len(z) > 4 * len(data)
    small = b"after\n"
    pack = write_pack(tmp_path / "p.pack", [blob_entry(data, z), blob_entry(small)])
    with PackFile(pack) as pf:
        assert pf.read(gobj.object_id(gobj.BLOB, data), verify=True) == (gobj.BLOB, data)
        assert pf.read(gobj.object_id(gobj.BLOB, small)) == (gobj.BLOB, small)
    repo = init_bare(tmp_path / "r.git")
    git(repo, "index-pack", "--stdin", input=pack.read_bytes())  # git agrees it is valid


def test_version_3_header_and_long_ofs_distance(tmp_path: Path) -> None:
    base = random.Random(2).randbytes(20_000)
    filler = [blob_entry(random.Random(i).randbytes(3000)) for i in range(60)]
    target = base[:5000] + b"changed" + base[5007:]
    delta = make_delta(base, target)
    base_oid, base_enc = blob_entry(base)
    before = 12 + len(base_enc) + sum(len(e) for _, e in filler)
    dist = before - 12
    ent = entry(OFS_DELTA, len(delta), zlib.compress(delta), ofs_bytes(dist))
    entries = [(base_oid, base_enc), *filler, (gobj.object_id(gobj.BLOB, target), ent)]
    pack = write_pack(tmp_path / "p.pack", entries, version=3)
    with PackFile(pack) as pf:
        assert pf.read(gobj.object_id(gobj.BLOB, target), verify=True) == (gobj.BLOB, target)
        assert pf.header(gobj.object_id(gobj.BLOB, target)) == (gobj.BLOB, len(target))


def test_wrong_id_detected_only_with_verify(tmp_path: Path) -> None:
    liar = b"\x42" * 20
    _, enc = blob_entry(b"not what the idx says\n")
    pack = write_pack(tmp_path / "p.pack", [(liar, enc)])
    with PackFile(pack) as pf:
        assert pf.read(liar) == (gobj.BLOB, b"not what the idx says\n")
        with pytest.raises(ObjectIdMismatch, match=liar.hex()):
            pf.read(liar, verify=True)
        with pytest.raises(ObjectIdMismatch):
            list(pf.iter_objects(verify=True))
    assert issubclass(ObjectIdMismatch, CorruptObject)


@pytest.mark.parametrize(
    "mangle, match",
    [
        (lambda d: b"PACX" + d[4:], "bad magic"),
        (lambda d: d[:4] + struct.pack(">I", 4) + d[8:], "version 4"),
        (lambda d: d[:8] + struct.pack(">I", 9) + d[12:], "9 objects"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum"),
        (lambda d: d[:20], "too short"),
    ],
)
def test_bad_pack_headers(tmp_path: Path, mangle: Callable[[bytes], bytes], match: str) -> None:
    pack = write_pack(tmp_path / "p.pack", [blob_entry(b"x" * 100), blob_entry(b"y")])
    idx = PackIndex(pack.with_suffix(".idx"))
    data = pack.read_bytes()
    pack.write_bytes(mangle(data))
    with pytest.raises(CorruptPack, match=match):
        PackFile(pack, idx)
    idx.close()


def corrupt_pack(tmp_path: Path, enc: bytes, data: bytes = b"payload " * 50) -> tuple[Path, bytes]:
    oid = gobj.object_id(gobj.BLOB, data)
    return write_pack(tmp_path / "p.pack", [(oid, enc)]), oid


@pytest.mark.parametrize(
    "make, match",
    [
        # a flipped byte inside the deflate data
        (lambda d, z: entry(gobj.BLOB, len(d), z[:10] + bytes([z[10] ^ 0xFF]) + z[11:]), "zlib"),
        # header promises more bytes than the stream holds
        (lambda d, z: entry(gobj.BLOB, len(d) + 1, z), "header says"),
        # header promises fewer
        (lambda d, z: entry(gobj.BLOB, len(d) - 1, z), "header says"),
        # stream cut short: the next bytes are the trailer, not zlib
        (lambda d, z: entry(gobj.BLOB, len(d), z[: len(z) // 2]), "zlib|header says"),
        # type 5 is reserved
        (lambda d, z: entry(5, len(d), z), "invalid type 5"),
        # delta offset pointing before the pack header
        (lambda d, z: entry(OFS_DELTA, len(d), z, ofs_bytes(100)), "delta base offset"),
        # a header declaring far more than any object (and than an ssize_t)
        (lambda d, z: b"\xb0" + b"\xff" * 11 + b"\x01" + z, "allowed"),
    ],
)
def test_corrupt_entries_raise_corrupt_object(
    tmp_path: Path, make: Callable[[bytes, bytes], bytes], match: str
) -> None:
    data = b"payload " * 50
    pack, oid = corrupt_pack(tmp_path, make(data, zlib.compress(data)))
    with PackFile(pack) as pf, pytest.raises(CorruptObject, match=match):
        pf.read(oid)


def test_ref_delta_cycle_is_reported_not_looped(tmp_path: Path) -> None:
    a, b = b"\x0a" * 20, b"\x0b" * 20
    delta = bytes([5, 5, 0x90, 5])  # copy 5 bytes from offset 0
    z = zlib.compress(delta)
    pack = write_pack(
        tmp_path / "p.pack",
        [(a, entry(REF_DELTA, len(delta), z, b)), (b, entry(REF_DELTA, len(delta), z, a))],
    )
    with PackFile(pack) as pf:
        with pytest.raises(CorruptPack, match="does not end"):
            pf.read(a)
        with pytest.raises(CorruptPack, match="does not end"):
            pf.header(a)


def test_bad_delta_in_pack(tmp_path: Path) -> None:
    base = b"0123456789" * 10
    base_oid, base_enc = blob_entry(base)
    delta = bytes([99, 5, 0x90, 5])  # claims a 99-byte source
    ent = entry(OFS_DELTA, len(delta), zlib.compress(delta), ofs_bytes(len(base_enc)))
    pack = write_pack(tmp_path / "p.pack", [(base_oid, base_enc), (b"\x01" * 20, ent)])
    with PackFile(pack) as pf, pytest.raises(BadDelta, match="entry at"):
        pf.read(b"\x01" * 20)


# -- delta application ---------------------------------------------------------


def make_delta(src: bytes, tgt: bytes) -> bytes:
    d = create_delta(src, tgt)
    return d if isinstance(d, bytes) else b"".join(d)


@settings(max_examples=200, deadline=None)
@given(
    src=st.binary(max_size=3000),
    edits=st.lists(st.tuples(st.integers(0, 3000), st.binary(max_size=50)), max_size=8),
)
def test_apply_delta_undoes_create_delta(src: bytes, edits: list[tuple[int, bytes]]) -> None:
    tgt = bytearray(src)
    for pos, ins in edits:
        p = min(pos, len(tgt))
        tgt[p : p + len(ins) // 2] = ins
    delta = make_delta(src, bytes(tgt))
    assert apply_delta(src, delta) == bytes(tgt)


def test_apply_delta_copy_size_zero_means_64k() -> None:
    src = random.Random(3).randbytes(0x10000 + 10)
    # varints 65546 (src) and 65536 (tgt), then "copy offset 0, size bytes omitted"
    delta = bytes([0x8A, 0x80, 0x04, 0x80, 0x80, 0x04, 0x80])
    assert apply_delta(src, delta) == src[:0x10000]


@pytest.mark.parametrize(
    "delta",
    [
        bytes([100, 100, 0x91, 90, 20]),  # copies past the end of the base
        bytes([100, 5, 0]),  # reserved opcode 0
        bytes([100, 5, 5, 1, 2]),  # insert runs off the end
        bytes([100, 50, 0x90, 10]),  # output shorter than the target size
        bytes([100, 5, 0x90, 10]),  # output longer than the target size
        bytes([99, 5, 0x90, 5]),  # wrong source size
        bytes([100]),  # truncated header
    ],
)
def test_bad_deltas_rejected(delta: bytes) -> None:
    base = b"x" * 100
    with pytest.raises(BadDelta):
        apply_delta(base, delta)


def test_shared_packfile_across_threads(history_repo: Path) -> None:
    pack = only_pack(history_repo)
    with PackFile(pack, cache_bytes=256 * 1024) as pf:
        oids = all_ids(pf)
        expected = cat_all(history_repo, oids)
        work = oids * 3
        random.Random(4).shuffle(work)
        with ThreadPoolExecutor(4) as ex:
            results = list(ex.map(pf.read, work))
        for oid, got in zip(work, results, strict=True):
            assert got == expected[oid]


def test_close_while_a_slice_of_the_map_is_alive(tmp_path: Path) -> None:
    """A save that raced gc died with 'internal error: BufferError: cannot close
    exported pointers exist': a pack closed while a read's slice of its map was
    still referenced. Closing must not fail; the map goes when the slice does."""
    from ketch.git.pack import PackWriter

    objects = tmp_path / "objects"
    w = PackWriter(str(objects))
    oid = w.write(gobj.BLOB, b"still viewed\n")
    [idx] = w.close()
    p = PackFile(idx[: -len(".idx")] + ".pack")
    view = p._read(12, 8)
    p.close()
    assert bytes(view)[:1]  # the slice still reads
    del view
    with PackFile(idx[: -len(".idx")] + ".pack") as again:
        assert again.read(oid) == (gobj.BLOB, b"still viewed\n")
