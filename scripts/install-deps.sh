#!/usr/bin/env bash
# Install ftpatch, and what its tests need, on Debian 12.
#
# ftpatch goes into a virtual environment, .venv at the repository root
# (Debian's own python3 refuses `pip install` outside one: PEP 668,
# "externally-managed-environment").  Afterwards run it as .venv/bin/ftpatch,
# or activate the environment first:  . .venv/bin/activate ; ftpatch --help
#
#   scripts/install-deps.sh            everything the whole suite needs (what CI uses)
#   scripts/install-deps.sh --quick    what `scripts/test.sh --quick` needs: no qemu-system,
#                                      kernel source, podman or debootstrap
#   scripts/install-deps.sh --runtime  ftpatch alone, in the venv (apt only for python3-venv)
#
# apt-get waits up to 10 minutes for another apt or dpkg run to finish instead
# of failing on its lock.  The venv is made once and reused: pip runs again
# only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
case "${1:-}" in
    "") ;;
    --quick) mode=quick ;;
    --runtime) mode=runtime ;;
    *) echo "usage: $0 [--quick | --runtime]" >&2; exit 2 ;;
esac

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
LOCK_WAIT=600

apt_get() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=$LOCK_WAIT "$@"
}

# `apt-get update` takes the lists lock, which DPkg::Lock::Timeout does not
# cover in every apt version: retry while another run holds it.
apt_update() {
    local deadline=$((SECONDS + LOCK_WAIT)) err
    while true; do
        if err=$(apt_get update -qq 2>&1 >/dev/null); then return 0; fi
        if [[ $err == *"Could not get lock"* ]] && ((SECONDS < deadline)); then
            echo "install-deps: waiting for the apt lock held by another run"
            sleep 5
            continue
        fi
        echo "$err" >&2
        return 1
    done
}

apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    echo "install-deps: apt-get install ${missing[*]}"
    apt_update
    apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [[ $mode != runtime ]]; then
    # The quick suite: cross toolchains, clang/lld/llvm, qemu-user (the e2e
    # programs), make (tests/test_minikernel.py), host gcc (a non-AArch64 object),
    # openssl, xz-utils, zstd (tests/test_module_files.py signs and compresses
    # modules as sign-file and modules_install do).
    APT_PACKAGES=(
        gcc g++-aarch64-linux-gnu gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu
        clang lld llvm qemu-user make openssl xz-utils zstd
    )
    if [[ $mode == full ]]; then
        # The real-kernel boot (scripts/kernel-e2e.sh), the container check
        # (scripts/container-check.sh) and GNU time for benchmarks/.
        APT_PACKAGES+=(
            bc flex bison libssl-dev libelf-dev cpio qemu-system-arm linux-source-6.1
            linux-source-6.12
            podman debootstrap time
        )
    fi
    apt_install "${APT_PACKAGES[@]}"
fi

# --- the virtual environment -------------------------------------------------
VENV=.venv
venv_ok() {
    [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}
if ! venv_ok; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 has the venv module but not ensurepip, which
        # python3-venv (python3.X-venv) provides.
        rm -rf "$VENV"
        echo "install-deps: python3 -m venv needs python3-venv: apt-get install python3-venv"
        apt_install python3-venv
        python3 -m venv "$VENV"
    fi
fi

extras=""
[[ $mode != runtime ]] && extras="[test]"
stamp=$VENV/.ftpatch-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) ${extras:-[runtime]}"
installed() {
    # What the last install put in, for this pyproject.toml; [test] includes the runtime.
    [[ -f $stamp ]] || return 1
    grep -qxF "$want" "$stamp" && return 0
    [[ -z $extras ]] && grep -qxF "${want% *} [test]" "$stamp"
}
# The editable install must be of this checkout (a copied .venv would not be).
root=$PWD
if installed && (cd / && "$root/$VENV/bin/python" -c \
        'import sys, ftpatch; sys.exit(ftpatch.__file__ != sys.argv[1])' \
        "$root/ftpatch/__init__.py") 2>/dev/null; then
    exit 0
fi
echo "install-deps: pip install -e .$extras into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".$extras"
echo "$want" >>"$stamp"
