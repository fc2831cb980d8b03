#!/usr/bin/env bash
# Install a ketch wheel (`make dist`) into its own virtual environment and put
# `ketch` on the PATH: as root, on a fresh Debian, Ubuntu or Amazon Linux 2023.
#
#   scripts/install-ketch.sh WHEEL [--prefix DIR] [--find-links DIR] [--bin-dir DIR] [--python PY]
#
#   --prefix DIR      the virtual environment (default /opt/ketch)
#   --find-links DIR  take the dependencies from DIR and nowhere else (offline); on a
#                     machine with the same Python, `pip wheel -w DIR ketch-*.whl` fills it.
#                     Without it they come from the package index, as for any pip install.
#   --bin-dir DIR     where the `ketch` link goes (default /usr/local/bin: on root's,
#                     sudo's and sshd's PATH, so `ketch server setup-client`, which
#                     writes the `ketch` it finds on the PATH into the forced command,
#                     writes DIR/ketch, a path that survives reinstalls)
#   --python PY       the interpreter for the environment (default: the python3.X the
#                     wheel was built for, installed with apt-get or dnf when missing)
#
# The wheel carries the compiled kernel for one Python version and CPU
# (ketch-0.1.0-cp311-cp311-linux_x86_64.whl), so no compiler is needed here; a
# wheel for another Python or CPU is refused before anything is installed.
# A second run reinstalls ketch in place (even at the same version number) and
# keeps the dependencies that still fit.  Errors: one line, exit 2.
set -euo pipefail
umask 022  # the backup user, not only root, runs the forced command from PREFIX

die() { echo "install-ketch: $*" >&2; exit 2; }
# The steps that can fail say why; anything else still ends in one line and 2.
trap 'echo "install-ketch: failed: $BASH_COMMAND (line $LINENO)" >&2; exit 2' ERR

prefix=/opt/ketch
bin_dir=/usr/local/bin
find_links=
python=
wheels=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --prefix|--find-links|--bin-dir|--python)
            [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
            case $1 in
                --prefix) prefix=$2 ;;
                --find-links) find_links=$2 ;;
                --bin-dir) bin_dir=$2 ;;
                --python) python=$2 ;;
            esac
            shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) wheels+=("$1"); shift ;;
    esac
done
[[ ${#wheels[@]} -eq 1 ]] || die "give one wheel (ketch-*.whl from make dist), got ${#wheels[@]}"
wheel=${wheels[0]}
[[ -f $wheel ]] || die "$wheel: no such file"
[[ $(basename "$wheel") == ketch-*.whl ]] || die "$wheel: not a ketch wheel (ketch-*.whl)"
[[ -z $find_links || -d $find_links ]] || die "--find-links $find_links: no such directory"
wheel=$(realpath "$wheel")
prefix=$(realpath -m "$prefix")   # the link must hold an absolute path
bin_dir=$(realpath -m "$bin_dir")

link=$bin_dir/ketch  # checked now: nothing is installed when it would fail
if [[ -e $link && ! -L $link ]]; then
    die "$link exists and is not a link (another ketch install?): remove it and run again"
fi

# ketch-VERSION[-BUILD]-PYTAG-ABI-PLATFORM.whl: the last three fields say
# which Python (cp311: CPython 3.11 only) and which CPU (linux_x86_64).
IFS=- read -r -a fields <<<"$(basename "$wheel" .whl)"
n=${#fields[@]}
[[ $n -ge 5 ]] || die "$wheel: not a wheel's file name (ketch-VERSION-PY-ABI-PLATFORM.whl)"
pytag=${fields[n-3]} platform=${fields[n-1]}
want=   # the X.Y the wheel needs, empty for a pure-Python (py3) wheel
if [[ $pytag =~ ^cp3([0-9]+)$ ]]; then want=3.${BASH_REMATCH[1]}; fi
if [[ $platform != any ]]; then
    arch=$(uname -m)
    [[ ${platform%%.*} == *_"$arch" ]] || die "$wheel is for $platform, this machine is $arch: run make dist on a $arch machine"
fi

version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
fits() {  # fits PYTHON: the interpreter runs, is the wheel's version (or >= 3.11) and has venv
    local v
    v=$(version_of "$1") || return 1
    if [[ -n $want ]]; then [[ $v == "$want" ]] || return 1
    else "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || return 1; fi
    # Debian and Ubuntu ship ensurepip (which venv needs) apart, in python3.X-venv.
    "$1" -c 'import ensurepip, venv' 2>/dev/null
}
find_python() {
    local c
    for c in ${want:+python$want} python3; do
        c=$(command -v "$c") && fits "$c" && { echo "$c"; return 0; }
    done
    return 1
}
install_python() {
    local ids pkgs
    ids=$( . /etc/os-release 2>/dev/null && echo "${ID:-} ${ID_LIKE:-}" ) || ids=
    [[ $(id -u) -eq 0 ]] || die "no Python ${want:-3.11+} with venv here: run as root to install it, or give --python"
    case " $ids " in
        *" debian "*|*" ubuntu "*)
            pkgs="python${want:-3} python${want:-3}-venv"
            echo "==> apt-get install $pkgs"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null \
                || die "apt-get could not install $pkgs: build the wheel (make dist) with the Python this system has ($(version_of python3 || echo none))"
            ;;
        *" amzn "*|*" fedora "*|*" rhel "*)
            # Amazon Linux 2023: its python3 is 3.9, too old for ketch, but
            # python3.11 is a package.  Untested here (the tests run on Debian).
            pkgs="python${want:-3.11} python${want:-3.11}-pip"
            command -v dnf >/dev/null || die "no dnf to install $pkgs (Amazon Linux 2 is too old: use Amazon Linux 2023)"
            echo "==> dnf install $pkgs"
            dnf install -y -q $pkgs >/dev/null || die "dnf could not install $pkgs"
            [[ -n $want ]] || want=3.11
            ;;
        *) die "no Python ${want:-3.11+} with venv here, and this is not Debian, Ubuntu or Amazon Linux: install it and give --python" ;;
    esac
}

if [[ -n $python ]]; then
    python=$(command -v "$python") || die "--python $python: not found"
    fits "$python" || die "--python $python: not Python ${want:-3.11+} with venv (this wheel is $pytag)"
else
    python=$(find_python) || { install_python; python=$(find_python) \
        || die "still no Python ${want:-3.11+} with venv after installing it"; }
fi

# The environment: reused when it runs the right Python, remade (--clear)
# when not; never made over a directory that is something else.
if [[ -e $prefix/pyvenv.cfg ]]; then
    if [[ $(version_of "$prefix/bin/python" || true) != "$(version_of "$python")" ]]; then
        echo "==> $prefix: remaking the environment for $("$python" --version)"
        "$python" -m venv --clear "$prefix" || die "$python -m venv --clear $prefix failed"
    fi
elif [[ -e $prefix && -n $(ls -A "$prefix") ]]; then
    die "$prefix exists and is not a virtual environment: give another --prefix"
else
    echo "==> $prefix: new environment ($("$python" --version))"
    "$python" -m venv "$prefix" || die "$python -m venv $prefix failed"
fi

pip=("$prefix/bin/python" -m pip --disable-pip-version-check -q install)
[[ -z $find_links ]] || pip+=(--no-index --find-links "$(realpath "$find_links")")
had=$("$prefix/bin/python" -c 'import importlib.metadata as m; print(m.version("ketch"))' 2>/dev/null || true)
echo "==> installing $(basename "$wheel") into $prefix${had:+ (replacing $had)}"
"${pip[@]}" "$wheel" || die "pip could not install $wheel into $prefix (its error is above)"
if [[ -n $had ]]; then
    # pip keeps an installed ketch of the same version: the rebuilt wheel
    # must replace it all the same.
    "${pip[@]}" --no-deps --force-reinstall "$wheel" || die "pip could not reinstall $wheel into $prefix"
fi

mkdir -p "$bin_dir" || die "cannot make $bin_dir"
# A new link renamed over the old one: a backup starting meanwhile finds one or the other.
ln -sfn "$prefix/bin/ketch" "$link.new.$$" && mv -Tf "$link.new.$$" "$link" \
    || die "cannot link $link to $prefix/bin/ketch"
got=$("$link" --version) || die "$link --version failed"
echo "==> $got: $link -> $prefix/bin/ketch"
