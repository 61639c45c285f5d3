#!/bin/bash
# Fetch qemu-system-aarch64 from Debian's bookworm-backports into DEST and
# print the binary's path (the last line), for scripts/kernel-e2e.sh.
#
#   bash scripts/fetch-qemu.sh [DEST]
#
# Why: Debian 12's qemu 7.2 (TCG, several vCPUs in parallel) can keep
# running a translation of kernel code after the guest has rewritten it.
# Read from the qemu monitor after such an Oops, guest memory held the NOP
# that ftrace had written over a site's BL, while every vCPU still took the
# BL into a module trampoline the unload had just freed; the stock kernel
# does the same (examples/kernel/README.md, "Flakes of the stock kernel
# under qemu").  The e2e boots on qemu 10 from bookworm-backports instead.
#
# DEST (default /var/tmp/ftpatch-qemu) receives a private apt state and the
# unpacked packages (qemu-system-arm, -common, -data): nothing is installed
# and the machine's apt configuration is left alone.  The libraries qemu
# links against are bookworm's; those not installed yet are installed with
# apt-get.  A DEST that already holds a runnable qemu is reused.
set -euo pipefail
dest=${1:-/var/tmp/ftpatch-qemu}
bin=$dest/root/usr/bin/qemu-system-aarch64
if [ -x "$bin" ] && "$bin" --version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi
mkdir -p "$dest"/apt/{lists/partial,cache/archives/partial} "$dest"/deb
cat >"$dest/apt/sources.list" <<'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
EOF
apt=(
	-o "Dir::State=$dest/apt" -o "Dir::State::Lists=$dest/apt/lists"
	-o "Dir::State::status=/dev/null" -o "Dir::Cache=$dest/apt/cache"
	-o "Dir::Etc::SourceList=$dest/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
)
apt-get "${apt[@]}" -qq update >&2
packages=(qemu-system-arm qemu-system-common qemu-system-data)
rm -f "$dest"/deb/*.deb
# apt's download sandbox user cannot write to a root-owned DEST.
(cd "$dest/deb" && apt-get "${apt[@]}" -o APT::Sandbox::User=root -qq download "${packages[@]}" >&2)
rm -rf "$dest/root"
for deb in "$dest"/deb/*.deb; do
	dpkg-deb -x "$deb" "$dest/root"
done
# Its shared libraries, from bookworm itself (backports are built against it).
libs=()
for dep in $(apt-cache "${apt[@]}" depends qemu-system-arm | awk '$1 == "Depends:" {print $2}'); do
	case $dep in qemu-* | "<"*) continue ;; esac
	dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q "install ok installed" || libs+=("$dep")
done
if [ ${#libs[@]} -gt 0 ]; then
	echo "fetch-qemu: apt-get install ${libs[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${libs[@]}" >&2 ||
		{ apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${libs[@]}" >&2; }
fi
"$bin" --version | head -1 >&2
echo "$bin"
