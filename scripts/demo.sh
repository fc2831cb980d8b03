#!/usr/bin/env bash
# Demo of the stream commands: split a ~20 MB file into a fresh repository,
# list it, join it back, and show that git and bup both accept the result.
# (The filesystem save/restore demo comes with `ketch save`.)
#
# Run via `make demo` (which sets up .venv).  KEEP=1 keeps the temp dir.
set -euo pipefail

cd "$(dirname "$0")/.."
KETCH="${KETCH:-$PWD/.venv/bin/ketch}"  # KETCH=... to demo another build
PY="$PWD/.venv/bin/python"
[[ -x "$KETCH" ]] || { echo "demo: $KETCH missing; run 'make demo'" >&2; exit 2; }

export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
unset KETCH_DIR BUP_DIR

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ketch-demo.XXXXXX")
if [[ "${KEEP:-}" == 1 ]]; then
    trap 'echo "==> kept $WORK"' EXIT
else
    trap 'rm -rf "$WORK"' EXIT
fi
REPO="$WORK/repo"
SRC="$WORK/sample.bin"
OUT="$WORK/joined.bin"

fail() { echo "demo: FAILED: $*" >&2; exit 1; }

echo "==> ketch -d $REPO init"
"$KETCH" -d "$REPO" init

echo "==> generating a ~20 MB sample: random data, zeros, and repeats of earlier parts"
"$PY" - "$SRC" <<'PYEOF'
import random
import sys

rng = random.Random(20240601)
a = rng.randbytes(6 << 20)
b = rng.randbytes(3 << 20)
parts = [a, bytes(2 << 20), b, a[: 4 << 20], rng.randbytes(1 << 20), a, b[: 1 << 20]]
with open(sys.argv[1], "wb") as f:
    for p in parts:
        f.write(p)
PYEOF
ls -l "$SRC"

echo "==> ketch -d REPO split -n demo sample.bin"
time "$KETCH" -d "$REPO" split -n demo "$SRC"

echo "==> ketch -d REPO ls"
"$KETCH" -d "$REPO" ls

echo "==> repository size (the sample is $(du -sh "$SRC" | cut -f1); repeated parts are stored once)"
du -sh "$REPO"

echo "==> ketch -d REPO join demo > joined.bin"
"$KETCH" -d "$REPO" join demo > "$OUT"

echo "==> cmp joined.bin sample.bin"
cmp "$OUT" "$SRC" || fail "joined data differs from the source"
echo "identical"

echo "==> git --git-dir=REPO fsck --strict"
git --git-dir="$REPO" fsck --strict || fail "git fsck reported problems"
echo "clean"

if command -v bup >/dev/null 2>&1; then
    echo "==> bup -d REPO join demo | cmp - sample.bin   (bup reads ketch's repository)"
    bup -d "$REPO" join demo | cmp - "$SRC" || fail "bup join differs from the source"
    echo "identical"

    echo "==> bup split of the same file into a second repository gives the same tree id"
    bup -d "$WORK/bup-repo" init >/dev/null 2>&1 || fail "bup init failed"
    bup -d "$WORK/bup-repo" split -n demo "$SRC"
    ours=$(git --git-dir="$REPO" rev-parse 'demo^{tree}')
    theirs=$(git --git-dir="$WORK/bup-repo" rev-parse 'demo^{tree}')
    echo "ketch: $ours"
    echo "bup:   $theirs"
    [[ "$ours" == "$theirs" ]] || fail "tree ids differ"
else
    fail "bup is not installed (run: make deps)"
fi

echo "==> demo OK"
