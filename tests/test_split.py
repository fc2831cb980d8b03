"""Hashsplitting (ketch.split) against bup-format.md section 1 and the real bup."""

from __future__ import annotations

import functools
import hashlib
import io
import os
import random
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.errors import UsageError
from ketch.git.objects import (
    BLOB,
    EMPTY_BLOB_ID,
    EMPTY_TREE_ID,
    MODE_FILE,
    MODE_TREE,
    TREE,
    decode_tree,
    object_id,
)
from ketch.rollsum import rollsum_state
from ketch.split import (
    BLOB_MAX,
    READ_SIZE,
    ChunkTree,
    Splitter,
    fanbits_for,
    make_shalist_tree,
    read_blocks,
    split_chunks,
    split_to_blob_or_tree,
    split_to_blobs,
    split_to_tree,
)
from tests.kernelutil import KERNELS, use_kernel

# Fresh X after these 7 bytes is 225*(7+6+5+4+3+2) + 4 = 6079, the split value,
# and smaller before it: a 7-byte chunk wherever it starts, so repeating it
# makes every chunk end inside the first 63 bytes of its own rollsum.
TINY_CHUNK = b"\xe1" * 6 + b"\x04"

CRAFT_MID = bytes.fromhex(
    "b523202bff46281a95a8dcc8c2c506b8cdb194d4cc09734f0de408be6948e69d"
    "34dfa0539fc11e6119333e2f56c8b5a5549d48d397fd325bf9b7f5519315f03a"
    "dcb3575e2c5ce7229c21178db24972eb9bdf885ebc6a7bd68728d6d42da6e840"
    "07fd473dcfdfc60e5b8e8f0a96d2731b6e5b1e910a4b83cdd771d2a051bccbeb"
)


@pytest.fixture(autouse=True, params=KERNELS)
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on the compiled kernel and on the numpy one."""
    name: str = request.param
    use_kernel(name, monkeypatch)
    return name


class MemorySink:
    """Stores objects in a dict, keyed by their git id."""

    def __init__(self) -> None:
        self.objects: dict[bytes, tuple[int, bytes]] = {}

    def write(self, type_num: int, data: bytes | memoryview) -> bytes:
        oid = object_id(type_num, data)
        self.objects[oid] = (type_num, bytes(data))
        return oid

    def ls(self, tree: bytes) -> list[tuple[int, bytes, bytes]]:
        type_num, data = self.objects[tree]
        assert type_num == TREE
        return [(e.mode, e.name, e.oid) for e in decode_tree(data)]

    def join(self, oid: bytes) -> bytes:
        type_num, data = self.objects[oid]
        if type_num == BLOB:
            return data
        return b"".join(self.join(e.oid) for e in decode_tree(data))


def blocks_of(data: bytes, size: int = READ_SIZE) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def ids_text(oids: Iterable[bytes]) -> bytes:
    """What `bup split -b` prints."""
    return b"".join(oid.hex().encode() + b"\n" for oid in oids)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# --- reference driver: spec 1.2-1.5 literally, one byte at a time ----------------


def ref_find_ofs(buf: bytes) -> tuple[int, int]:
    s1, s2 = 1984, 124992
    window = [0] * 64
    w = 0
    for i, c in enumerate(buf):
        d = window[w]
        s1 = (s1 + c - d) & 0xFFFFFFFF
        s2 = (s2 + s1 - 64 * (d + 31)) & 0xFFFFFFFF
        window[w] = c
        w = (w + 1) & 63
        if (s2 & 0x1FFF) == 0x1FFF:
            r = (((s1 << 16) | (s2 & 0xFFFF)) & 0xFFFFFFFF) >> 13
            bits = 13
            while True:
                r >>= 1
                if not r & 1:
                    break
                bits += 1
            return i + 1, bits
    return 0, 0


def ref_split(blocks: Iterable[bytes], fanbits: int = 4) -> Iterator[tuple[bytes, int]]:
    buf = b""
    for block in blocks:
        buf += block
        while True:
            ofs, bits = ref_find_ofs(buf)
            if not ofs:
                break
            level = 0 if ofs > BLOB_MAX else (bits - 13) // fanbits
            ofs = min(ofs, BLOB_MAX)
            yield buf[:ofs], level
            buf = buf[ofs:]
        while len(buf) >= BLOB_MAX:
            yield buf[:BLOB_MAX], 0
            buf = buf[BLOB_MAX:]
    if buf:
        yield buf, 0


def chunks_as_bytes(blocks: Iterable[bytes], fanbits: int = 4) -> list[tuple[bytes, int]]:
    return [(bytes(c), level) for c, level in split_chunks(blocks, fanbits)]


# --- test data (bup-format.md appendix A) -----------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("splitdata")
    (d / "rand3m.bin").write_bytes(random.Random(1).randbytes(3_000_000))
    (d / "a.bin").write_bytes(random.Random(2).randbytes(100000))
    (d / "b.bin").write_bytes(random.Random(3).randbytes(100000))
    (d / "zero10m.bin").write_bytes(bytes(10_000_000))
    (d / "craft.bin").write_bytes(bytes(32704) + CRAFT_MID + bytes(9_000_000 - 32832))
    return d


@pytest.fixture(scope="module")
def rand3m(data_dir: Path) -> bytes:
    data = (data_dir / "rand3m.bin").read_bytes()
    assert sha1(data) == "4a1df9430d59b51e90a420ab380347dfdabe69f3"
    return data


BupSplit = Callable[..., list[bytes]]


@pytest.fixture(scope="module")
def bup_split(tmp_path_factory: pytest.TempPathFactory) -> BupSplit:
    """Run `bup split --noop ARGS` in a private BUP_DIR; returns the printed ids."""
    exe = shutil.which("bup")
    if exe is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("bup is not installed; CI requires it")
        pytest.skip("bup is not installed")
    bup_exe: str = exe
    env = dict(
        os.environ,
        BUP_DIR=str(tmp_path_factory.mktemp("bupdir")),
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_CONFIG_NOSYSTEM="1",
    )
    subprocess.run([bup_exe, "init"], env=env, check=True, capture_output=True)
    # Each test runs once per kernel: bup answers each input once.
    seen: dict[tuple[str, ...], list[bytes]] = {}

    def run(*args: str | Path) -> list[bytes]:
        key = tuple(sha1(a.read_bytes()) if isinstance(a, Path) else a for a in args)
        if key not in seen:
            proc = subprocess.run(
                [bup_exe, "split", "--noop", *map(str, args)],
                env=env,
                check=True,
                capture_output=True,
                timeout=300,
            )
            seen[key] = [bytes.fromhex(line) for line in proc.stdout.decode().split()]
        return seen[key]

    return run


# --- rollsum ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, s1, s2",
    [
        (b"", 0x7C0, 0x1E840),
        (b"a", 0x821, 0x1E8A1),
        (bytes(range(64)), 0xFA0, 0x292E0),
        (bytes(range(256)), 0x3FA0, 0x8AAE0),
        (bytes(64), 0x7C0, 0x1E840),
        (b"\xff" * 100, 0x4780, 0xA0020),
    ],
)
def test_rollsum_sanity_values(data: bytes, s1: int, s2: int) -> None:
    assert rollsum_state(data) == (s1, s2)


def test_first_boundaries_of_rand3m(rand3m: bytes) -> None:
    table = [
        (2374, 0x2907, 0x61FFF, 0x29071FFF, 13),
        (6377, 0x2764, 0x5DFFF, 0x2764DFFF, 15),
        (743, 0x27A4, 0x61FFF, 0x27A41FFF, 13),
    ]
    # With one bit per level, the level is bits - 13 exactly.
    chunks = list(split_chunks(blocks_of(rand3m), fanbits=1))
    ofs = 0
    for (chunk, level), (length, s1, s2, digest, bits) in zip(chunks, table, strict=False):
        assert len(chunk) == length
        assert rollsum_state(rand3m[ofs : ofs + length]) == (s1, s2)
        assert ((s1 << 16) | (s2 & 0xFFFF)) == digest
        assert ref_find_ofs(rand3m[ofs:]) == (length, bits)
        assert level == bits - 13
        ofs += length


def test_fanbits_for() -> None:
    assert [fanbits_for(f) for f in (0, 2, 3, 4, 16, 17, 256, 1000)] == [0, 1, 1, 2, 4, 4, 8, 9]
    with pytest.raises(UsageError):
        fanbits_for(1)


# --- test vectors (bup-format.md 1.9) -------------------------------------------------


def test_tv1_blobs(rand3m: bytes) -> None:
    chunks = chunks_as_bytes(blocks_of(rand3m))
    assert len(chunks) == 388
    assert sha1(ids_text(object_id(BLOB, c) for c, _ in chunks)) == (
        "44d7bba13e19066bde0d12e545382fb3264efec6"
    )
    offsets = [0]
    for c, _ in chunks:
        offsets.append(offsets[-1] + len(c))
    assert sha1(b"".join(b"%d " % o for o in offsets[:-1])) == (
        "72b031c4ca6c3bb2e0c918b1da2b5053e845a0fc"
    )
    assert Counter(level for _, level in chunks) == {0: 367, 1: 20, 2: 1}
    assert min(len(c) for c, _ in chunks) == 27
    assert sum(len(c) == BLOB_MAX for c, _ in chunks) == 5
    first = [
        (offsets[i], len(c), level, object_id(BLOB, c).hex()[:8])
        for i, (c, level) in enumerate(chunks[:3])
    ]
    assert first == [
        (0, 2374, 0, "dd4e8cbf"),
        (2374, 6377, 0, "ba922590"),
        (8751, 743, 0, "8115e0be"),
    ]
    high = [(offsets[i], len(c), level) for i, (c, level) in enumerate(chunks) if level]
    assert high[10] == (1762241, 20334, 2)
    assert high[-1] == (2969396, 10556, 1)
    assert [(offsets[i], len(c)) for i, (c, _) in enumerate(chunks)][-2:] == [
        (2979952, 212),
        (2980164, 19836),
    ]


def test_tv1_blobs_api(rand3m: bytes) -> None:
    sink = MemorySink()
    blobs = list(split_to_blobs(sink, blocks_of(rand3m)))
    assert sha1(ids_text(oid for oid, _ in blobs)) == "44d7bba13e19066bde0d12e545382fb3264efec6"
    assert sum(size for _, size in blobs) == len(rand3m)


@pytest.mark.parametrize(
    "fanout, tree",
    [
        (16, "c7cdc1336117390bd4a0b685f8dd4a3f1a4ca1bc"),
        (4, "7a30e4a7ba9c001cf87932acea068da342f09718"),
        (256, "95d39274c139d40b827aeb3b61c8d16abccb6a9d"),
    ],
)
def test_tv1_trees(rand3m: bytes, fanout: int, tree: str) -> None:
    sink = MemorySink()
    oid, size = split_to_tree(sink, blocks_of(rand3m), fanbits_for(fanout))
    assert oid.hex() == tree
    assert size == len(rand3m)
    assert sink.join(oid) == rand3m
    if fanout == 16:
        assert [(m, n, o.hex()[:8]) for m, n, o in sink.ls(oid)] == [
            (MODE_TREE, b"000000", "b48534fa"),
            (MODE_TREE, b"1b332f", "583e3e00"),
        ]


def test_save_semantics(rand3m: bytes) -> None:
    sink = MemorySink()
    mode, oid, size = split_to_blob_or_tree(sink, blocks_of(rand3m))
    assert (mode, oid.hex(), size) == (
        MODE_TREE,
        "c7cdc1336117390bd4a0b685f8dd4a3f1a4ca1bc",
        3_000_000,
    )
    small = b"hello, chunk\n" * 3
    assert split_to_blob_or_tree(sink, [small]) == (MODE_FILE, object_id(BLOB, small), len(small))
    # A single 32 KiB chunk (forced cut of zeros) is still a plain blob.
    zeros = bytes(BLOB_MAX)
    assert split_to_blob_or_tree(sink, [zeros]) == (MODE_FILE, object_id(BLOB, zeros), BLOB_MAX)
    assert split_to_blob_or_tree(sink, []) == (MODE_FILE, EMPTY_BLOB_ID, 0)
    assert EMPTY_BLOB_ID in sink.objects


def test_split_tree_always_a_tree() -> None:
    sink = MemorySink()
    data = b"0123456789abcdef0123456789abcdef012\n"
    oid, size = split_to_tree(sink, [data])
    assert size == 36
    assert sink.ls(oid) == [(MODE_FILE, b"00", object_id(BLOB, data))]
    assert split_to_tree(sink, []) == (EMPTY_TREE_ID, 0)


def keep_boundaries_tree(sink: MemorySink, files: list[bytes]) -> bytes:
    tree = ChunkTree(sink)
    for data in files:
        for chunk, level in split_chunks(blocks_of(data)):
            tree.add(MODE_FILE, sink.write(BLOB, chunk), len(chunk), level)
    return make_shalist_tree(sink, tree.top())


def test_tv2_keep_boundaries(data_dir: Path) -> None:
    a = (data_dir / "a.bin").read_bytes()
    b = (data_dir / "b.bin").read_bytes()
    sink = MemorySink()
    # Without --keep-boundaries each file's reads are appended to one stream.
    oid, _ = split_to_tree(sink, blocks_of(a) + blocks_of(b))
    assert oid.hex() == "1fd660835670f20bfced682ca2f11753579c6f4e"
    assert split_to_tree(sink, [a + b])[0] == oid
    kept = keep_boundaries_tree(sink, [a, b])
    assert kept.hex() == "024232fc3981647d7d063d1d42ae01735ed0e672"


def test_tv3_zeros(data_dir: Path) -> None:
    sink = MemorySink()
    with open(data_dir / "zero10m.bin", "rb") as f:
        oid, size = split_to_tree(sink, read_blocks(f))
    assert (oid.hex(), size) == ("e6b42a173c4bc3a77a4aebd62dcc9e73ef3181b0", 10_000_000)
    top = sink.ls(oid)
    assert [name for _, name, _ in top] == [b"000000", b"800000"]
    assert [len(sink.ls(sub)) for _, _, sub in top] == [256, 50]
    assert {o.hex()[:8] for _, _, o in sink.ls(top[0][2])} == {"12f3be4d"}


def test_tv4_buffer_dependence(data_dir: Path) -> None:
    data = (data_dir / "craft.bin").read_bytes()
    assert sha1(data) == "8a64cd2a5a396d1f62b874fcb03f14b27eb6fc15"
    chunks = chunks_as_bytes(blocks_of(data))
    assert [len(c) for c, _ in chunks] == [BLOB_MAX] * 274 + [21568]
    assert sha1(ids_text(object_id(BLOB, c) for c, _ in chunks)) == (
        "50fe2f003989b2e6005bc0fdc9bc0a6a93392742"
    )
    sink = MemorySink()
    assert split_to_tree(sink, blocks_of(data))[0].hex() == (
        "40c9bb442ccda295a50201c80870fdb43e6ed84d"
    )
    mode, oid, _ = split_to_blob_or_tree(sink, blocks_of(data))
    assert (mode, oid.hex()) == (MODE_TREE, "40c9bb442ccda295a50201c80870fdb43e6ed84d")


# --- the driver against the literal reference -----------------------------------------


def test_reference_driver_random_blocks() -> None:
    """Odd read sizes make every buffering rule (1.5 3b/3c) fire many times."""
    rng = random.Random(7)
    data = rng.randbytes(300_000) + bytes(70_000) + rng.randbytes(100) + bytes(40_000)
    for size in (9000, 40_000, 100_003):
        assert chunks_as_bytes(blocks_of(data, size)) == list(ref_split(blocks_of(data, size)))


def build(segments: list[tuple[str, int, int]]) -> bytes:
    out = bytearray()
    for kind, n, seed in segments:
        if kind == "rand":
            out += random.Random(seed).randbytes(n)
        elif kind == "zero":
            out += bytes(n)
        elif kind == "tiny":
            out += bytes(64) + TINY_CHUNK * (n // 7 + 1)
        else:
            pattern = random.Random(seed).randbytes(seed % 300 + 1)
            out += (pattern * (n // len(pattern) + 1))[:n]
    return bytes(out)


segments = st.lists(
    st.tuples(
        st.sampled_from(["rand", "zero", "rep"]), st.integers(1, 40_000), st.integers(0, 2**32)
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=segments, block=st.integers(2000, 60_000), fanbits=st.sampled_from([1, 2, 4, 8]))
def test_reference_driver_property(
    segments: list[tuple[str, int, int]], block: int, fanbits: int
) -> None:
    data = build(segments)
    expect = list(ref_split(blocks_of(data, block), fanbits))
    assert chunks_as_bytes(blocks_of(data, block), fanbits) == expect


def test_tiny_chunks() -> None:
    rng = random.Random(3)
    # 64 zero bytes leave the rollsum as if fresh, so the tiny chunks line up.
    data = (
        rng.randbytes(50_000)
        + bytes(64)
        + TINY_CHUNK * 20
        + bytes(40_000)
        + TINY_CHUNK * 3
        + rng.randbytes(300)
        + bytes(64)
        + TINY_CHUNK * 1000
    )
    chunks = chunks_as_bytes(blocks_of(data, 30_000))
    assert chunks == list(ref_split(blocks_of(data, 30_000)))
    assert sum(c == TINY_CHUNK for c, _ in chunks) > 1000
    short = TINY_CHUNK * 40 + b"\xe1" * 5  # small enough for the pure-Python path
    assert (
        chunks_as_bytes([short])
        == list(ref_split([short]))
        == [(TINY_CHUNK, 0)] * 40 + [(b"\xe1" * 5, 0)]
    )


def fresh_hit(data: bytes) -> bool:
    return ref_find_ofs(data)[0] != 0


def test_buffer_end_is_not_padding() -> None:
    """A chunk start near the end of a buffer must not see past it."""
    rng = random.Random(17)
    while True:
        tail = rng.randbytes(rng.randrange(1, 40))
        if not fresh_hit(tail) and fresh_hit(tail + bytes(63 - len(tail))):
            break
    blocks = [TINY_CHUNK + tail, rng.randbytes(5000)]
    assert chunks_as_bytes(blocks) == list(ref_split(blocks))
    assert chunks_as_bytes([tail]) == [(tail, 0)]


def test_feed_is_eager_and_empty_feed_is_ignored() -> None:
    data = random.Random(5).randbytes(50_000)
    s = Splitter()
    s.feed(data[:30_000])  # not iterated: the state must still advance
    assert list(s.feed(b"")) == []
    rest = [(bytes(c), lvl) for c, lvl in s.feed(data[30_000:])]
    rest += [(bytes(c), lvl) for c, lvl in s.finish()]
    whole = list(ref_split([data[:30_000], data[30_000:]]))
    assert rest == whole[len(whole) - len(rest) :]
    assert b"".join(c for c, _ in rest) == data[-sum(len(c) for c, _ in rest) :]


# --- read_blocks -----------------------------------------------------------------------


def test_read_blocks_joins_short_pipe_reads() -> None:
    data = random.Random(9).randbytes(250_000)
    rfd, wfd = os.pipe()

    def writer() -> None:
        with open(wfd, "wb", buffering=0) as w:
            for i in range(0, len(data), 777):
                w.write(data[i : i + 777])

    t = threading.Thread(target=writer)
    t.start()
    with open(rfd, "rb", buffering=0) as r:  # raw: reads return what the pipe has
        got = list(read_blocks(r, 100_000))
    t.join()
    assert [len(b) for b in got] == [100_000, 100_000, 50_000]
    assert b"".join(got) == data
    assert list(read_blocks(io.BytesIO(b""))) == []
    assert list(read_blocks(io.BytesIO(b"x" * 10), 5)) == [b"xxxxx", b"xxxxx"]


# --- against the real bup ------------------------------------------------------------------


def ours_tree(data: bytes) -> bytes:
    return split_to_tree(MemorySink(), blocks_of(data))[0]


def ours_blobs(data: bytes) -> list[bytes]:
    return [oid for oid, _ in split_to_blobs(MemorySink(), blocks_of(data))]


SIZES = [
    0,
    1,
    63,
    64,
    65,
    384,
    385,
    8191,
    8192,
    32767,
    32768,
    32769,
    READ_SIZE - 1,
    READ_SIZE,
    READ_SIZE + 1,
    20_000_000,
]


@pytest.mark.parametrize("size", SIZES)
def test_random_sizes_match_bup(size: int, tmp_path: Path, bup_split: BupSplit) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    assert bup_split("-t", path) == [ours_tree(data)]
    assert bup_split("-b", path) == ours_blobs(data)


@functools.cache
def repetitive_inputs() -> dict[str, bytes]:
    rng = random.Random(11)
    text = b"".join(
        b"INSERT INTO t VALUES (%d, 'name %d', %d.%02d);\n"
        % (i, rng.randrange(999), rng.randrange(9999), i % 100)
        for i in range(60_000)
    )
    return {
        "zeros-100k": bytes(100_000),
        "zeros-over-buffer": bytes(READ_SIZE + 40_000),
        "abc": b"abc" * 400_000,
        "period-1000": rng.randbytes(1000) * 3000,
        "period-70000": rng.randbytes(70_000) * 40,
        "sparse": b"".join(
            bytes(rng.randrange(20_000, 60_000)) + rng.randbytes(200) for _ in range(100)
        ),
        "text": text,
        "tiny-chunks": TINY_CHUNK * 20_000,
        "tiny-after-caps": b"".join(
            bytes(rng.randrange(33_000, 70_000))
            + TINY_CHUNK * 3
            + rng.randbytes(rng.randrange(1, 100))
            for _ in range(50)
        ),
    }


@pytest.mark.parametrize("name", sorted(repetitive_inputs()))
def test_repetitive_inputs_match_bup(name: str, tmp_path: Path, bup_split: BupSplit) -> None:
    data = repetitive_inputs()[name]
    path = tmp_path / "in.bin"
    path.write_bytes(data)
    assert bup_split("-t", path) == [ours_tree(data)]
    assert bup_split("-b", path) == ours_blobs(data)


def test_odd_fanout_matches_bup(data_dir: Path, rand3m: bytes, bup_split: BupSplit) -> None:
    oid, _ = split_to_tree(MemorySink(), blocks_of(rand3m), fanbits_for(3))
    assert bup_split("-t", "--fanout", "3", data_dir / "rand3m.bin") == [oid]


def test_several_files_match_bup(tmp_path: Path, bup_split: BupSplit) -> None:
    """A file's short last read is not merged with the next file's first read."""
    rng = random.Random(13)
    files = [rng.randbytes(READ_SIZE + 5000), bytes(50_000), rng.randbytes(30_000)]
    paths = []
    for i, data in enumerate(files):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(data)
    sink = MemorySink()
    stream = [b for data in files for b in blocks_of(data)]
    assert bup_split("-t", *paths) == [split_to_tree(sink, stream)[0]]
    assert bup_split("-t", "--keep-boundaries", *paths) == [keep_boundaries_tree(sink, files)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(segments=segments)
def test_property_trees_match_bup(
    segments: list[tuple[str, int, int]],
    tmp_path_factory: pytest.TempPathFactory,
    bup_split: BupSplit,
) -> None:
    data = build(segments)
    path = tmp_path_factory.mktemp("prop") / "in.bin"
    path.write_bytes(data)
    assert bup_split("-t", path) == [ours_tree(data)]


# -- many small files chunked in one pass -------------------------------------------


def _file_strategy() -> st.SearchStrategy[bytes]:
    part = st.one_of(
        st.binary(min_size=0, max_size=3000),
        st.integers(0, 40_000).map(lambda n: bytes(n)),
        st.integers(0, 70_000).map(lambda n: random.Random(n).randbytes(n)),
    )
    return st.lists(part, max_size=3).map(b"".join)


@settings(max_examples=60, deadline=None)
@given(st.lists(_file_strategy(), max_size=12))
def test_split_files_equals_one_splitter_per_file(files: list[bytes]) -> None:
    from ketch.split import split_files

    got = split_files(files)
    assert len(got) == len(files)
    for data, chunks in zip(files, got, strict=True):
        sp = Splitter(4)
        want = [(bytes(c), lv) for c, lv in list(sp.feed(data)) + list(sp.finish())]
        assert [(bytes(c), lv) for c, lv in chunks] == want


def test_split_files_on_real_sizes() -> None:
    from ketch.split import split_files

    r = random.Random(12)
    files = [r.randbytes(int(r.lognormvariate(8, 1.5))) for _ in range(300)]
    files += [bytes(100_000), b"x" * 70_000, b""]
    for data, chunks in zip(files, split_files(files), strict=True):
        sp = Splitter(4)
        want = [(bytes(c), lv) for c, lv in list(sp.feed(data)) + list(sp.finish())]
        assert [(bytes(c), lv) for c, lv in chunks] == want
