"""`ketch mount` over a real /dev/fuse: what `cp -a` and `find` get from the
mount is what `ketch restore` and the VFS give; random reads of a large image
match the source; over ssh a read moves about the bytes it reads."""

from __future__ import annotations

import os
import random
import re
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from ketch.localrepo import LocalRepository
from ketch.vfs import VFS
from tests.conftest import RunKetch
from tests.offsite.conftest import s3_env, s3_server, s3_url
from tests.remote.conftest import sshd
from tests.remote.test_remote import Machine
from tests.services.mount import KetchMount, require_fuse
from tests.services.sshd import SshServer
from tests.test_restore import ODD_GID, ODD_UID, assert_same_tree

MiB = 1 << 20
# The ssh and S3 servers' fixtures, shared with tests/remote and tests/offsite.
__all__ = ["s3_env", "s3_server", "s3_url", "sshd"]


@pytest.fixture(autouse=True)
def _fuse() -> None:
    require_fuse()


def _tree(root: Path) -> None:
    (root / "etc" / "conf.d").mkdir(parents=True)
    (root / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    (root / "etc" / "conf.d" / "a.conf").write_bytes(b"a = 1\n" * 1000)
    (root / "bin").mkdir()
    (root / "bin" / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "run.sh", 0o750)
    (root / "secret").write_bytes(b"s3cret\n")
    os.chmod(root / "secret", 0o600)
    os.chown(root / "secret", ODD_UID, ODD_GID)
    (root / "big.bin").write_bytes(random.Random(1).randbytes(3 * MiB))
    (root / "empty").write_bytes(b"")
    (root / "emptydir").mkdir()
    (root / "hard1").write_bytes(b"one inode, three names\n")
    os.link(root / "hard1", root / "etc" / "hard2")
    os.link(root / "hard1", root / "hard3")
    os.symlink("etc/hosts", root / "link")
    os.symlink("does/not/exist", root / "dangling")
    os.symlink("etc", root / "dirlink")
    with open(os.fsencode(root) + b"/latin1-\xe9\xff", "wb") as f:
        f.write(b"not utf-8\n")
    (root / "new\nline").write_bytes(b"newline\n")
    (root / "xattr.txt").write_bytes(b"xattrs\n")
    os.setxattr(root / "xattr.txt", "user.k1", b"v1")
    os.setxattr(root / "xattr.txt", "user.bin", bytes(range(256)))
    # Atimes an hour ahead: relatime leaves them alone when the save, cp and the
    # comparison read the files (it bumps an atime older than mtime or ctime).
    ahead = time.time_ns() + 3600 * 10**9
    for i, p in enumerate(sorted(root.rglob("*"), reverse=True)):
        os.utime(p, ns=(ahead + i, 1_600_000_000_123_456_789 + i * 1_000_001),
                 follow_symlinks=False)
    os.chmod(root / "emptydir", 0o700)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("mount")
    tree = base / "tree"
    tree.mkdir()
    _tree(tree)
    repo = base / "repo"
    from tests.web.fleet import run_ketch_plain
    run_ketch_plain("init", "-d", repo, check=True)
    run_ketch_plain("save", "-d", repo, "-n", "m", tree, check=True)
    return repo, tree


def _in_save(tree: Path) -> str:
    return "m/latest" + str(tree)


def test_cp_a_from_the_mount_equals_a_restore(saved: tuple[Path, Path], tmp_path: Path,
                                             run_ketch: RunKetch) -> None:
    repo, tree = saved
    with KetchMount.start(tmp_path / "m", "-d", repo) as m:
        src = m.path / _in_save(tree)
        (tmp_path / "cp").mkdir()
        subprocess.run(["cp", "-a", str(src), str(tmp_path / "cp")], check=True)
        # Hardlinks share their inode, and say how many names they have.
        h1, h2 = os.stat(src / "hard1"), os.stat(src / "etc" / "hard2")
        assert h1.st_ino == h2.st_ino and h1.st_nlink == h2.st_nlink == 3
        assert os.stat(src / "secret").st_uid == ODD_UID
        assert os.readlink(src / "dangling") == "does/not/exist"
        with pytest.raises(OSError):
            open(src / "etc" / "hosts", "ab").close()  # noqa: SIM115 - read-only
    run_ketch("restore", "-d", repo, "-C", tmp_path / "rs", _in_save(tree), check=True)
    assert_same_tree(tmp_path / "cp" / tree.name, tmp_path / "rs" / tree.name)
    assert (tmp_path / "cp" / tree.name / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()


def test_find_lists_what_the_repository_holds(saved: tuple[Path, Path], tmp_path: Path) -> None:
    repo, tree = saved
    vfs = VFS(LocalRepository(str(repo)))
    want = {rel for rel, _ in vfs.walk(vfs.resolve(b"m/latest")) if rel}
    with KetchMount.start(tmp_path / "m", "-d", repo) as m:
        out = subprocess.run(["find", str(m.path / "m" / "latest") + "/", "-mindepth", "1",
                              "-printf", "%P\\0"], check=True, capture_output=True).stdout
        top = subprocess.run(["ls", "-A", str(m.path)], check=True, capture_output=True).stdout
    got = {p for p in out.split(b"\0") if p}
    assert got == want
    assert top.split() == [b".tag", b"m"]


def test_random_reads_of_a_large_image_match_the_source(tmp_path: Path,
                                                        run_ketch: RunKetch) -> None:
    image = tmp_path / "disk.img"
    rng = np.random.default_rng(7)
    block = rng.integers(0, 256, 64 * MiB, dtype=np.uint8).tobytes()
    with open(image, "wb") as f:
        for i in range(16):  # 1 GiB: each 64 MiB block altered, so little is shared
            f.write(bytes([i]) * 4096 + block[4096:])
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    run_ketch("save", "-d", repo, "-n", "vm", image, check=True, timeout=900)
    picks = random.Random(11)
    size = image.stat().st_size
    assert size == 1 << 30
    with KetchMount.start(tmp_path / "m", "-d", repo) as m, \
            open(m.path / ("vm/latest" + str(image)), "rb", buffering=0) as got, \
            open(image, "rb", buffering=0) as want:
        assert os.fstat(got.fileno()).st_size == size
        for _ in range(1000):
            off = picks.randrange(size)
            n = picks.choice([1, 511, 4096, 65536, 300_000])
            assert os.pread(got.fileno(), n, off) == os.pread(want.fileno(), n, off), off


def test_over_ssh_a_read_moves_about_what_it_reads(sshd: SshServer, tmp_path: Path,
                                                   run_ketch: RunKetch) -> None:
    data = random.Random(3).randbytes(64 * MiB)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "db.dump").write_bytes(data)
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    run_ketch("save", "-d", repo, "-n", "db", tmp_path / "src", check=True)
    machine = Machine.new(sshd, "mount-read")
    with KetchMount.start(tmp_path / "m", "-r", machine.url(repo), env=machine.env) as m:
        with open(m.path / ("db/latest" + str(tmp_path / "src") + "/db.dump"), "rb") as f:
            f.seek(40 * MiB)
            assert f.read(MiB) == data[40 * MiB:41 * MiB]
        assert m.interrupt() == 0
        log = m.log()
    got = re.search(r"([\d,.]+) MB received", log)
    assert got is not None, log
    received = float(got.group(1).replace(",", "")) * 1e6
    print(f"a 1 MiB read of a 64 MiB file over ssh received {received / 1e6:.2f} MB")
    assert received < 8 * MiB, log  # the file is 64 MiB: only the chunks under the read came


def test_ctrl_c_and_daemon_leave_nothing_mounted(saved: tuple[Path, Path], tmp_path: Path,
                                                 run_ketch: RunKetch) -> None:
    repo, tree = saved
    with KetchMount.start(tmp_path / "fg", "-d", repo) as m:
        assert (m.path / _in_save(tree) / "etc" / "hosts").read_bytes() == \
            (tree / "etc" / "hosts").read_bytes()
        assert m.interrupt() == 0
        assert not os.path.ismount(m.path)
    mnt = tmp_path / "bg"
    mnt.mkdir()
    # The command returns once mounted, holding none of its caller's pipes.
    got = run_ketch("mount", "--daemon", "-d", repo, mnt, timeout=60)
    assert got.returncode == 0, got.stderr
    pid = int(re.search(rb"pid (\d+)", got.stderr).group(1))  # type: ignore[union-attr]
    try:
        assert os.path.ismount(mnt)
        assert stat.S_ISLNK(os.lstat(mnt / "m" / "latest").st_mode)
        again = run_ketch("mount", "-d", repo, mnt)
        assert again.returncode == 2 and b"mounted there already" in again.stderr
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            break
        subprocess.run(["sleep", "0.1"], check=True)
    assert not os.path.exists(f"/proc/{pid}") and not os.path.ismount(mnt)


def test_bad_mounts_say_one_line(saved: tuple[Path, Path], tmp_path: Path,
                                 run_ketch: RunKetch) -> None:
    repo, _ = saved
    (tmp_path / "mnt").mkdir()
    for args in (("-d", repo, tmp_path / "missing"), ("-d", tmp_path / "nope", tmp_path / "mnt"),
                 ("--daemon", "-d", tmp_path / "nope", tmp_path / "mnt")):
        got = run_ketch("mount", *args, timeout=60)
        err = got.stderr.decode()
        assert got.returncode == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.usefixtures("s3_env")
def test_a_mirror_in_s3_mounts_too(saved: tuple[Path, Path], tmp_path: Path, s3_url: str,
                                   run_ketch: RunKetch) -> None:
    repo, tree = saved
    run_ketch("mirror", "push", repo, s3_url, check=True)
    with KetchMount.start(tmp_path / "m", "-r", f"{s3_url}/{repo.name}") as m:
        src = m.path / _in_save(tree)
        assert (src / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()
        assert os.readlink(src / "link") == "etc/hosts"
        assert os.stat(src / "secret").st_mode & 0o777 == 0o600
