#!/usr/bin/env bash
# Install what ftpatch's tests need on Debian 12: the aarch64 cross toolchains,
# clang/lld/llvm, qemu-user (and, for the slow suites, qemu-system-aarch64,
# podman, debootstrap), then ftpatch itself with its test extras.
#   scripts/install-deps.sh            everything (what CI uses)
#   scripts/install-deps.sh --runtime  only ftpatch itself (pip), no apt
set -euo pipefail
cd "$(dirname "$0")/.."

runtime_only=0
[[ "${1:-}" == "--runtime" ]] && runtime_only=1

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

if [[ $runtime_only -eq 0 ]]; then
    APT_PACKAGES=(
        gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu
        clang lld llvm qemu-user make bc flex bison libssl-dev libelf-dev cpio xz-utils
        qemu-system-arm linux-source-6.1 podman debootstrap time
    )
    missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "install-deps: apt-get install ${missing[*]}"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    python3 -m pip install -q --disable-pip-version-check -e ".[test]"
else
    python3 -m pip install -q --disable-pip-version-check -e .
fi
