#!/usr/bin/env bash
# Install the Debian packages ketch's tests, demo and benchmark need.
#
# Idempotent: does nothing when everything is present.  As root it runs
# `apt-get update` (only when something is missing) and installs what is
# missing; as any other user it prints the command to run and carries on
# (tests that need a missing tool skip themselves outside CI).
set -euo pipefail

# openssh-server: tests/services/sshd.py runs a private sshd on 127.0.0.1.
# systemd (only for systemd-analyze), openssl, tzdata: the schedule and notify tests.
# mariadb-server, mariadb-client, postgresql, postgresql-client, sqlite3: the
#   database dumps (src/ketch/jobs/dumps.py) run mysqldump, pg_dump, pg_dumpall
#   and sqlite3, and tests/services/{mariadb,postgres}.py start throwaway
#   servers from these binaries on private sockets.  The packages' own system
#   servers are not needed: where policy-rc.d forbids starting services (as in
#   containers) they stay stopped; elsewhere they run on their default sockets,
#   which the tests never touch.
# cron, util-linux (unshare): tests/test_readme_walkthrough.py runs the README's
#   walk-through with a real cron daemon in a private PID and mount namespace.
# passwd (useradd): tests/remote/test_setup_client.py makes throwaway backup users.
# restic, borgbackup: the benchmark's lifecycle phase (bench/ketchbench/lifecycle.py)
#   runs them beside ketch and bup: retention and space reclaimed, same data.
# par2: recovery data for packs (ketch fsck -g / --repair), in bup's layout.
# gcc, python3-dev: `pip install` builds the compiled rolling-checksum kernel
#   (src/ketch/_rollsum.c, setup.py) with them; python3-dev pulls in the headers
#   of Debian's python3 (python3.X-dev), the one `make venv` uses.  Without them
#   the install still succeeds and ketch splits with numpy, several times slower.
# fuse3: ketch mount (mfusepy loads its libfuse3; fusermount3 unmounts).
# chromium: tests/web/test_web_browser.py drives it through Playwright (pip's
#   playwright package only; `playwright install` is never run).
PACKAGES="bup git python3-venv acl attr time e2fsprogs python3-pyxattr python3-pylibacl openssh-server systemd openssl tzdata"
PACKAGES+=" mariadb-server mariadb-client postgresql postgresql-client sqlite3 cron util-linux passwd"
PACKAGES+=" restic borgbackup par2 gcc python3-dev chromium fuse3"

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install-deps: not a Debian system; install the equivalents of: $PACKAGES" >&2
    exit 0
fi

missing=()
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != *"install ok installed"* ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

cmd="DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run:  sudo apt-get update && sudo $cmd" >&2
    exit 0
fi

echo "==> installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
