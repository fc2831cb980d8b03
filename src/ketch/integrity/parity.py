"""Recovery data for packs: par2 files beside each pack, in bup's `fsck -g` layout.

For `objects/pack/pack-SHA.pack` bup 0.33 runs, in a temp directory of the pack
directory holding symlinks to the pack and its idx,

    par2 create -qq -t1 -n1 -c200 -- pack-SHA pack-SHA.pack pack-SHA.idx

which makes `pack-SHA.par2` (the index: file ids and hashes) and
`pack-SHA.vol000+200.par2` (200 recovery blocks, about 10% of the pack and its
idx), then moves them beside the pack, the index last; `verify` and `repair`
run `par2 verify|repair -- pack-SHA`. ketch runs the same commands, so bup's
parity and ketch's are the same bytes, and each reads the other's. One
difference, not in the files: `-q` instead of `-qq`, so that a failure can say
why (par2's last line). `-t1` stays: par2's threads spin while they wait, and
on a busy machine two threads made parity 6 times slower than one.

Why a temp directory: par2 interrupted by Ctrl-C leaves empty or partial files
(Parchive/par2cmdline#84). Nothing appears beside the pack until par2 is done
and the files are fsync'd, and the index appears last: a set cut short is a
vol file without its index, which never verifies (`has_parity` is False and
`ketch fsck -g` makes the set again). Pack readers look for `*.idx` (and git
for `*.idx`/`*.pack`), so neither the par2 files nor the temp directory are
ever taken for a pack.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import stat
import subprocess
import tempfile
import time

from ketch.errors import KetchError
from ketch.git.durable import fsync_dir


class ParityError(KetchError):
    """par2 is missing, failed, or the parity files are not usable."""


NOT_INSTALLED = "par2 is not installed (apt-get install par2)"
# bup's `fsck -g` settings: one recovery file of 200 blocks.
CREATE_ARGS = ("-n1", "-c200")
_INDEX = ".par2"
_TMP_INFIX = "-ketch-par2-"
# A temp directory older than this is a killed generate's, not a running one's.
_STALE_TMP = 3600.0
# par2 creates at ~4 MB/s a core; a run 20 times slower than that is stuck.
_TIMEOUT_BASE = 300.0
_TIMEOUT_PER_MB = 5.0
# par2's exit codes (par2cmdline's libpar2.h).
_REPAIR_POSSIBLE, _REPAIR_NOT_POSSIBLE, _REPAIR_FAILED = 1, 2, 5


def available() -> bool:
    """Whether par2 (Debian's `par2`, par2cmdline) is on PATH."""
    return shutil.which("par2") is not None


def _base(pack_path: str) -> str:
    if not pack_path.endswith(".pack"):
        raise ParityError(f"{pack_path}: not a pack file (expected a name ending in .pack)")
    return pack_path[: -len(".pack")]


def _vol_files(base: str) -> list[str]:
    return sorted(glob.glob(glob.escape(base) + ".vol*" + _INDEX))


def parity_files(pack_path: str) -> list[str]:
    """The par2 files of a pack that exist (the index first), whole or not."""
    base = _base(pack_path)
    index = [base + _INDEX] if os.path.lexists(base + _INDEX) else []
    return index + _vol_files(base)


def _nonempty(path: str) -> bool:
    """A regular file with something in it."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def has_parity(pack_path: str) -> bool:
    """Whether the pack has a complete parity set: the index and a recovery
    file, neither empty (bup's test of a set an interrupted par2 did not cut)."""
    base = _base(pack_path)
    return _nonempty(base + _INDEX) and any(_nonempty(v) for v in _vol_files(base))


def _need_par2() -> None:
    if not available():
        raise ParityError(NOT_INSTALLED)


def _last_line(*outputs: bytes) -> str:
    for out in outputs:
        lines = [ln.strip() for ln in out.decode(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return ""


def _timeout(base: str) -> float:
    size = sum(os.path.getsize(base + ext) for ext in (".pack", ".idx")
               if os.path.exists(base + ext))
    return _TIMEOUT_BASE + _TIMEOUT_PER_MB * size / 1e6


def _par2(action: str, args: list[str], base: str, *,
          cwd: str | None = None) -> tuple[int, str]:
    """Run `par2 ACTION -q -t1 ARGS`: its exit code and last line of output.
    ParityError when it cannot run or takes far longer than it should."""
    _need_par2()
    limit = _timeout(base)
    name = os.path.basename(base) + ".pack"
    try:
        proc = subprocess.run(["par2", action, "-q", "-t1", *args], cwd=cwd,
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise ParityError(f"{name}: par2 {action} gave no answer in {limit:.0f} s") from None
    except OSError as e:
        raise ParityError(f"{name}: cannot run par2: {e.strerror or e}") from None
    return proc.returncode, _last_line(proc.stderr, proc.stdout)


def _failed(action: str, base: str, rc: int, why: str) -> ParityError:
    why = why or f"exit status {rc}"
    return ParityError(f"{os.path.basename(base)}.pack: par2 {action} failed: {why}")


def _clear_stale(parent: str, stem: str) -> None:
    now = time.time()
    for d in glob.glob(os.path.join(glob.escape(parent), glob.escape(stem) + _TMP_INFIX + "*")):
        with contextlib.suppress(OSError):
            if now - os.lstat(d).st_mtime > _STALE_TMP:
                shutil.rmtree(d)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def generate(pack_path: str) -> None:
    """Make the pack's parity files beside it (replacing any it has), durably."""
    base = _base(pack_path)
    _need_par2()
    for ext in (".pack", ".idx"):
        if not os.path.isfile(base + ext):
            raise ParityError(f"{base + ext}: no such file")
    try:
        _generate(base)
    except OSError as e:  # a full disk, a read-only pack directory
        where = f"{e.filename}: " if e.filename else ""
        raise ParityError(f"{os.path.basename(base)}.pack: cannot write its parity: "
                          f"{where}{e.strerror or e}") from None


def _generate(base: str) -> None:
    parent, stem = os.path.split(base)
    parent = parent or "."
    _clear_stale(parent, stem)
    tmp = tempfile.mkdtemp(prefix=stem + _TMP_INFIX, dir=parent)
    try:
        for ext in (".pack", ".idx"):
            os.symlink(os.path.join("..", stem + ext), os.path.join(tmp, stem + ext))
        rc, why = _par2("create", [*CREATE_ARGS, "--", stem, stem + ".pack", stem + ".idx"],
                   base, cwd=tmp)
        if rc != 0:
            raise _failed("create", base, rc, why)
        made = sorted(n for n in os.listdir(tmp) if n.endswith(_INDEX))
        index = stem + _INDEX
        if index not in made or len(made) < 2:
            raise ParityError(f"{stem}.pack: par2 create made {', '.join(made) or 'nothing'}, "
                              f"not {index} and its recovery file")
        for n in made:
            _fsync(os.path.join(tmp, n))
        # The index last: until it is there the set is incomplete, never "intact".
        for n in [*(m for m in made if m != index), index]:
            os.rename(os.path.join(tmp, n), os.path.join(parent, n))
        fsync_dir(parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _require_parity(base: str) -> None:
    if not has_parity(base + ".pack"):
        name = os.path.basename(base) + ".pack"
        if parity_files(base + ".pack"):
            raise ParityError(f"{name}: its parity files are incomplete "
                              "(make them again with ketch fsck -g)")
        raise ParityError(f"{name}: no parity files")


def verify(pack_path: str) -> bool:
    """True when par2 finds the pack and its idx intact, False when damaged.
    ParityError when they cannot be checked (no parity, par2 missing or failing)."""
    base = _base(pack_path)
    _require_parity(base)
    rc, why = _par2("verify", ["--", base], base)
    if rc == 0:
        return True
    if rc in (_REPAIR_POSSIBLE, _REPAIR_NOT_POSSIBLE):
        return False
    raise _failed("verify", base, rc, why)


def _backups(base: str) -> set[str]:
    """Where par2 repair keeps a damaged file: NAME.1, NAME.2, ..."""
    return {p for ext in (".pack", ".idx")
            for p in glob.glob(glob.escape(base + ext) + ".[0-9]*")}


def repair(pack_path: str) -> bool:
    """Rewrite a damaged pack and idx from their parity: True when par2 repaired
    them (or found nothing to repair), False when the damage is more than the
    parity can make good. The damaged copies par2 keeps are removed after a
    repair; the caller re-verifies the pack with its own checks."""
    base = _base(pack_path)
    _require_parity(base)
    before = _backups(base)
    rc, why = _par2("repair", ["--", base], base)
    if rc == 0:
        for p in _backups(base) - before:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        fsync_dir(os.path.dirname(base) or ".")
        return True
    if rc in (_REPAIR_POSSIBLE, _REPAIR_NOT_POSSIBLE, _REPAIR_FAILED):
        return False
    raise _failed("repair", base, rc, why)
