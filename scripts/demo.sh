#!/usr/bin/env bash
# The README's first command: a real backup of a directory into a local
# repository, a listing, a restore compared with the source, and a second
# save after a change. Each step is shown. Run via `make demo`.
#
#   DEMO_SRC=/some/dir make demo   back up that directory instead of the sample
#   KEEP=1 make demo               keep the work directory
set -euo pipefail

cd "$(dirname "$0")/.."
KETCH="${KETCH:-$PWD/.venv/bin/ketch}"
PY="$PWD/.venv/bin/python"
[[ -x "$KETCH" ]] || { echo "demo: $KETCH missing; run 'make demo'" >&2; exit 2; }

export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
unset KETCH_DIR BUP_DIR

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ketch-demo.XXXXXX")
if [[ "${KEEP:-}" == 1 ]]; then trap 'echo "==> kept $WORK"' EXIT; else trap 'rm -rf "$WORK"' EXIT; fi
REPO="$WORK/repo"
step() { echo; echo "==> $*"; }
fail() { echo "demo: FAILED: $*" >&2; exit 1; }

SRC="${DEMO_SRC:-$WORK/data}"
if [[ -z "${DEMO_SRC:-}" ]]; then
    step "making a sample directory: a copy of /usr/share/common-licenses, a 30 MB disk-image-like file, a symlink, a hardlink"
    mkdir -p "$SRC/etc" "$SRC/var/lib"
    cp -a /usr/share/common-licenses "$SRC/etc/licenses"
    "$PY" - "$SRC/var/lib/disk.img" <<'PYEOF'
import random, sys
rng = random.Random(7)
a = rng.randbytes(8 << 20)
with open(sys.argv[1], "wb") as f:
    for part in (a, bytes(6 << 20), rng.randbytes(4 << 20), a, bytes(4 << 20)):
        f.write(part)
PYEOF
    ln -s licenses/GPL-3 "$SRC/etc/GPL"
    ln "$SRC/etc/licenses/Apache-2.0" "$SRC/var/lib/apache-license"
    chmod 0640 "$SRC/var/lib/disk.img"
fi
du -sh "$SRC"

step "ketch init -d $REPO"
"$KETCH" init -d "$REPO"

step "ketch save -n demo $SRC        (first backup: everything is new)"
"$KETCH" save -d "$REPO" -n demo --date "2026-11-01T22:00:00" "$SRC"

step "ketch ls                       (the backups in this repository)"
"$KETCH" ls -d "$REPO"
step "ketch ls -l demo/latest$SRC"
"$KETCH" ls -d "$REPO" -l "demo/latest$SRC"

step "changing one file, then ketch save again (only the change is stored)"
echo "a change made on the second day" >> "$SRC/etc/licenses/GPL-3"
"$KETCH" save -d "$REPO" -n demo --date "2026-11-02T22:00:00" "$SRC"
"$KETCH" ls -d "$REPO" demo
du -sh "$REPO"

step "ketch restore -C $WORK/restored demo/latest$SRC"
"$KETCH" restore -d "$REPO" -C "$WORK/restored" "demo/latest$SRC"

step "comparing the restore with the source: bytes, modes, owners, times, links"
diff -r --no-dereference "$SRC" "$WORK/restored/$(basename "$SRC")" || fail "restored content differs"
"$PY" - "$SRC" "$WORK/restored/$(basename "$SRC")" <<'PYEOF' || fail "restored metadata differs"
import os, sys
src, dst = sys.argv[1], sys.argv[2]
links = {}
for root, dirs, files in os.walk(src):
    for name in dirs + files:
        a = os.path.join(root, name)
        b = os.path.join(dst, os.path.relpath(a, src))
        sa, sb = os.lstat(a), os.lstat(b)
        for f in ("st_mode", "st_uid", "st_gid", "st_size"):
            assert getattr(sa, f) == getattr(sb, f), (a, f)
        if not os.path.isdir(a) or os.path.islink(a):
            assert sa.st_mtime_ns == sb.st_mtime_ns, (a, "mtime")
        if sa.st_nlink > 1 and not os.path.isdir(a):
            links.setdefault(sa.st_ino, set()).add(sb.st_ino)
assert all(len(v) == 1 for v in links.values()), "hardlinks not re-linked"
print("identical: content, mode, owner, size, mtime, hardlinks")
PYEOF

step "the first day's version is still there: ketch cat-file demo/<first save>$SRC/etc/licenses/GPL-3 | tail -1"
FIRST=$("$KETCH" ls -d "$REPO" demo | head -1)
"$KETCH" cat-file -d "$REPO" "demo/$FIRST$SRC/etc/licenses/GPL-3" | tail -1

step "git fsck --strict (a ketch repository is a git repository)"
git --git-dir="$REPO" fsck --strict --no-dangling 2>&1 | grep -v '^notice:' || true
git --git-dir="$REPO" fsck --strict --no-dangling >/dev/null 2>&1 || fail "git fsck"

if command -v bup >/dev/null; then
    step "bup reads it too: bup ls demo/latest$SRC/etc"
    bup -d "$REPO" ls "demo/latest$SRC/etc"
fi

step "demo OK"
