#!/usr/bin/env bash
# container-check.sh: build the Dockerfile's `check` target (which rebuilds the fixtures,
# rewrites and verifies them and runs the quick test suite inside the image), then the
# `ftpatch` target, and smoke-test the latter on a mounted copy of the fixtures.
#
#   scripts/container-check.sh              check + ftpatch images, smoke test
#   scripts/container-check.sh --check-only only the check target
#
# Works from nothing: with docker when a docker engine answers, otherwise with podman
# (`podman build --isolation=chroot`, no daemon needed), installing podman and debootstrap
# with apt-get if they are missing. Where debian:bookworm-slim is not in podman's storage
# (no registry here), it is made from Debian's packages with
# `debootstrap --variant=minbase bookworm`, trimmed the way the official slim image is,
# and imported under that name.
#
# Environment: CONTAINER_ENGINE=docker|podman to choose; DEBIAN_MIRROR (default
# http://deb.debian.org/debian) for debootstrap; IMAGE_PREFIX (default ftpatch) names the
# images IMAGE_PREFIX-check and IMAGE_PREFIX. With podman, a CA bundle named by PIP_CERT
# (or pip's `cert` setting) is mounted into the build for pip (TLS-intercepting proxies).
set -euo pipefail
cd "$(dirname "$0")/.."

check_only=0
case "${1:-}" in
	--check-only) check_only=1 ;;
	"") ;;
	-h|--help) sed -n '2,20p' "$0"; exit 0 ;;
	*) echo "usage: $0 [--check-only]" >&2; exit 2 ;;
esac

BASE_IMAGE=docker.io/library/debian:bookworm-slim
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PREFIX=${IMAGE_PREFIX:-ftpatch}
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

say() { printf '== container-check: %s\n' "$*"; }
t0=$SECONDS
elapsed() { printf '%dm%02ds' $(((SECONDS - t0) / 60)) $(((SECONDS - t0) % 60)); }

apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [[ ${#missing[@]} -gt 0 ]]; then
		say "apt-get install ${missing[*]}"
		$SUDO apt-get update -qq
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
			"${missing[@]}" >/dev/null
	fi
}

# --- engine ------------------------------------------------------------------------------
engine=${CONTAINER_ENGINE:-}
if [[ -z $engine ]]; then
	if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
		engine=docker
	else
		engine=podman
	fi
fi
build=()
extra=()
case "$engine" in
	docker)
		export DOCKER_BUILDKIT=1
		build=(docker build)
		;;
	podman)
		apt_install podman
		build=(podman build --isolation=chroot)
		cert=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
		if [[ -n $cert && -f $cert ]]; then
			say "pip CA bundle $cert mounted into the build"
			extra=(-v "$cert:/run/ftpatch-pip-ca.crt:ro" --build-arg PIP_CERT=/run/ftpatch-pip-ca.crt)
		fi
		;;
	*) echo "container-check: CONTAINER_ENGINE must be docker or podman" >&2; exit 2 ;;
esac
say "engine: $engine ($("$engine" --version 2>/dev/null | head -n1))"

# --- base image ----------------------------------------------------------------------------
if [[ $engine == podman ]] && ! podman image exists "$BASE_IMAGE"; then
	apt_install debootstrap
	root=$(mktemp -d /var/tmp/ftpatch-bookworm.XXXXXX)
	trap '$SUDO rm -rf "$root"' EXIT
	say "$BASE_IMAGE not in podman storage: debootstrap --variant=minbase bookworm ($MIRROR)"
	$SUDO debootstrap --variant=minbase bookworm "$root/rootfs" "$MIRROR" >"$root/debootstrap.log" 2>&1 ||
		{ tail -n 30 "$root/debootstrap.log" >&2; exit 1; }
	# What the official slim image adds: no docs/man/locales from later installs, apt
	# lists and .debs not kept, the updates and security suites.
	$SUDO tee "$root/rootfs/etc/dpkg/dpkg.cfg.d/docker" >/dev/null <<-'EOF'
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/groff/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/lintian/*
		path-exclude /usr/share/linda/*
		path-exclude /usr/share/locale/*
		path-include /usr/share/locale/locale.alias
	EOF
	$SUDO tee "$root/rootfs/etc/apt/apt.conf.d/docker-clean" >/dev/null <<-'EOF'
		DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		Dir::Cache::pkgcache "";
		Dir::Cache::srcpkgcache "";
	EOF
	$SUDO tee "$root/rootfs/etc/apt/apt.conf.d/docker-no-languages" >/dev/null <<<'Acquire::Languages "none";'
	$SUDO rm -f "$root/rootfs/etc/apt/sources.list"
	security=${MIRROR%/debian}/debian-security
	$SUDO tee "$root/rootfs/etc/apt/sources.list.d/debian.sources" >/dev/null <<-EOF
		Types: deb
		URIs: $MIRROR
		Suites: bookworm bookworm-updates
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

		Types: deb
		URIs: $security
		Suites: bookworm-security
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	$SUDO find "$root/rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
	$SUDO rm -rf "$root"/rootfs/usr/share/{man,info,groff,lintian,linda}/* \
		"$root"/rootfs/var/lib/apt/lists/* "$root"/rootfs/var/cache/apt/*.bin \
		"$root"/rootfs/var/cache/apt/archives/*.deb "$root"/rootfs/var/log/*.log
	$SUDO find "$root/rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
		-exec rm -rf {} +
	$SUDO tar -C "$root/rootfs" --numeric-owner -c . |
		podman import --change 'CMD ["bash"]' \
			--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			- "$BASE_IMAGE" >/dev/null
	$SUDO rm -rf "$root"
	trap - EXIT
	say "imported $BASE_IMAGE after $(elapsed)"
fi

# --- build ---------------------------------------------------------------------------------
say "build --target check (fixtures from source, rewrite, verify, quick tests)"
"${build[@]}" "${extra[@]}" --target check -t "$PREFIX-check" .
say "check target built after $(elapsed)"

if [[ $check_only -eq 0 ]]; then
	say "build --target ftpatch"
	"${build[@]}" "${extra[@]}" --target ftpatch -t "$PREFIX" .
	# Smoke test of the runtime image as a downstream build uses it: a mounted build tree.
	work=$(mktemp -d)
	cp fixtures/obj/gcc-plain-O2.o fixtures/obj/clang-bti.o "$work/"
	chmod -R a+rwX "$work"
	entrypoint=$("$engine" image inspect --format '{{json .Config.Entrypoint}}' "$PREFIX")
	[[ $entrypoint == '["ftpatch"]' ]] ||
		{ echo "container-check: $PREFIX entrypoint is $entrypoint" >&2; exit 1; }
	run=("$engine" run --rm --network=none -v "$work:/src" "$PREFIX")
	if "${run[@]}" --version >"$work/probe" 2>&1; then
		rc=0
		"${run[@]}" rewrite --check /src/gcc-plain-O2.o /src/clang-bti.o >/dev/null || rc=$?
		[[ $rc == 1 ]] ||
			{ echo "container-check: rewrite --check in $PREFIX exited $rc, expected 1" >&2; exit 1; }
		"${run[@]}" rewrite /src/gcc-plain-O2.o /src/clang-bti.o
		"${run[@]}" rewrite --check /src/gcc-plain-O2.o /src/clang-bti.o
		if "${run[@]}" verify --help >/dev/null 2>&1; then
			"${run[@]}" verify /src/gcc-plain-O2.o /src/clang-bti.o
		fi
	else
		# Some sandboxes let podman build but not run containers (crun cannot set rlimits
		# there): run the same commands in a build step on top of the image instead.
		say "cannot run containers here ($(tail -n1 "$work/probe")); smoke test in a build"
		cat >"$work/Containerfile" <<-EOF
			FROM $PREFIX
			COPY *.o /src/
			RUN ftpatch rewrite --check /src/*.o >/dev/null; test \$? = 1
			RUN ftpatch rewrite /src/*.o && ftpatch rewrite --check /src/*.o
			RUN if ftpatch verify --help >/dev/null 2>&1; then ftpatch verify /src/*.o; fi
		EOF
		smoke=$("${build[@]}" -q -f "$work/Containerfile" "$work" | tail -n1)
		"$engine" rmi "$smoke" >/dev/null
	fi
	rm -rf "$work"
	say "$PREFIX image: rewrite --check, rewrite (and verify, if present) OK"
fi

say "images:"
for image in "$PREFIX-check" "$PREFIX"; do
	if [[ $engine == podman ]] && podman image exists "$image"; then
		podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image"
	elif [[ $engine == docker ]] && docker image inspect "$image" >/dev/null 2>&1; then
		docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$image"
	fi
done
say "OK after $(elapsed)"
