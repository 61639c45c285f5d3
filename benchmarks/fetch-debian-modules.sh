#!/bin/bash
# Download and unpack a Debian arm64 kernel image package (its modules are
# signed and xz-compressed, as installed), for benchmarks/bench_distro.py.
#
#   bash benchmarks/fetch-debian-modules.sh [DEST] [PACKAGE]
#
# DEST (default /tmp/ftpatch-debian) receives a private apt state (the
# machine's own apt configuration and dpkg architectures are left alone),
# the .deb and the unpacked tree; the last line printed is the modules
# directory.  PACKAGE defaults to the newest linux-image-6.12.*-arm64 of
# bookworm-backports (the 4,349-module tree of the issue's figures was
# linux-image-6.12.95+deb12-arm64).  Nothing here is committed: the
# packages are Debian's, downloaded when measured.
set -euo pipefail
dest=${1:-/tmp/ftpatch-debian}
package=${2:-}
mkdir -p "$dest"/apt/{lists/partial,cache/archives/partial} "$dest"/deb
cat >"$dest/apt/sources.list" <<'EOF'
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
EOF
apt=(
    -o "Dir::State=$dest/apt" -o "Dir::State::Lists=$dest/apt/lists"
    -o "Dir::State::status=/dev/null" -o "Dir::Cache=$dest/apt/cache"
    -o "Dir::Etc::SourceList=$dest/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
    -o APT::Architecture=arm64 -o APT::Architectures::=arm64
)
apt-get "${apt[@]}" -qq update
if [ -z "$package" ]; then
    package=$(apt-cache "${apt[@]}" search --names-only '^linux-image-6\.12\.[0-9.]+\+deb12-arm64$' |
        awk '{print $1}' | sort -V | tail -1)
fi
echo "package: $package" >&2
(cd "$dest/deb" && apt-get "${apt[@]}" -qq download "$package")
rm -rf "$dest/root"
dpkg-deb -x "$dest"/deb/"$package"_*.deb "$dest/root"
ls -d "$dest"/root/lib/modules/*/kernel
