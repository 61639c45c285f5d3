# ftpatch container images.
#
#   docker build --target ftpatch -t ftpatch .     the tool: bookworm-slim + python3 + a venv
#   docker run --rm -v "$PWD:/src" ftpatch verify /src/vmlinux
#   docker build --target check .                  fails when anything is wrong: rebuilds the
#                                                  fixtures from source, rewrites and verifies
#                                                  them, runs the quick test suite
#   docker build --target base -t ftpatch-base .   python3 + the aarch64 toolchain the checks use
#
# podman: the same commands with `podman build --isolation=chroot`
# (scripts/container-check.sh builds `check` with podman or docker, from nothing).
#
# Stages: runtime (slim + python3) -> base (+ toolchain) -> check;
#         runtime -> builder (venv /opt/ftpatch) -> venv (pruned) -> ftpatch, check;
#         builder -> testdeps (pytest, hypothesis in /opt/ftpatch-test) -> check.
# The last stage, ftpatch, is also the default target.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# --- runtime: Debian's python3 (3.11 on bookworm), nothing else -------------------------
FROM ${DEBIAN_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && apt-get clean && rm -rf /var/lib/apt/lists/*

# --- base: + the aarch64 toolchain the checks need ----------------------------------------
# Cross GCC/G++ and binutils, the arm64 libc for linking the e2e program, clang/lld/llvm
# (llvm-objdump), qemu-user to run it, the host gcc (one test builds an x86 object) and
# make (examples/minikernel).
# Of qemu-user's 40 emulators (97 MB) only qemu-aarch64 and qemu-aarch64_be are kept.
# These are the versions fixtures/MANIFEST.json records (GCC 12.2.0, binutils 2.40,
# clang 14.0.6, qemu 7.2): `fixtures/build.sh --check` compares them bit for bit.
FROM runtime AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu \
        libc6-dev-arm64-cross clang lld llvm qemu-user gcc make openssl xz-utils zstd \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && find /usr/bin -name 'qemu-*' -not -name 'qemu-aarch64' -not -name 'qemu-aarch64_be' -delete

# --- builder: the venv /opt/ftpatch ----------------------------------------------------------
# Dependencies first (from pyproject.toml, so that editing the package keeps this layer),
# then the package itself. Everything has a wheel on x86_64; where one does not (for
# example keystone-engine on arm64 hosts) the compilers are installed here, in a stage
# whose files never reach the final images, and pip builds it from source.
FROM runtime AS builder
# PIP_CERT: an extra CA bundle for pip behind a TLS-intercepting proxy, mounted into the
# build by the caller (scripts/container-check.sh does so for podman); unset normally.
ARG PIP_CERT
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/ftpatch
COPY pyproject.toml /tmp/ftpatch/
RUN python3 -c 'import tomllib, sys; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print("\n".join(p["dependencies"]))' \
        /tmp/ftpatch/pyproject.toml >/tmp/requirements.txt \
 && if ! /opt/ftpatch/bin/pip install --only-binary=:all: -r /tmp/requirements.txt; then \
        echo "builder: some dependency has no wheel here; building from source" >&2; \
        apt-get update \
        && apt-get install -y --no-install-recommends cmake make g++ python3-dev \
        && /opt/ftpatch/bin/pip install -r /tmp/requirements.txt; \
    fi \
 && /opt/ftpatch/bin/python -c 'import capstone, keystone, rich, typer, unicorn; keystone.Ks(keystone.KS_ARCH_ARM64, keystone.KS_MODE_LITTLE_ENDIAN).asm("mov x9, x30")'
COPY README.md /tmp/ftpatch/
COPY ftpatch /tmp/ftpatch/ftpatch
RUN /opt/ftpatch/bin/pip install --no-deps /tmp/ftpatch \
 && rm -rf /tmp/ftpatch /tmp/requirements.txt \
 && /opt/ftpatch/bin/ftpatch --help >/dev/null

# --- venv: the same venv without what only installing needs ---------------------------------
# pip, setuptools, and unicorn's 33 MB static library (only the .so is loaded).
FROM builder AS venv
RUN /opt/ftpatch/bin/pip uninstall -y -q pip setuptools \
 && find /opt/ftpatch -name '*.a' -delete \
 && /opt/ftpatch/bin/python -c 'import unicorn; unicorn.Uc(unicorn.UC_ARCH_ARM64, unicorn.UC_MODE_ARM)' \
 && /opt/ftpatch/bin/ftpatch --help >/dev/null

# --- testdeps: pytest and hypothesis, outside the venv (the check tests the shipped venv) ----
FROM builder AS testdeps
ARG PIP_CERT
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c 'import tomllib, sys; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print("\n".join(d for d in p["optional-dependencies"]["test"] if not d.startswith(("mypy", "ruff"))))' \
        /tmp/pyproject.toml >/tmp/test-requirements.txt \
 && /opt/ftpatch/bin/pip install -q --target /opt/ftpatch-test -r /tmp/test-requirements.txt

# --- check: everything, from source, inside the image ------------------------------------
FROM base AS check
COPY --from=venv /opt/ftpatch /opt/ftpatch
COPY --from=testdeps /opt/ftpatch-test /opt/ftpatch-test
ENV PATH=/opt/ftpatch/bin:$PATH PYTHONPATH=/opt/ftpatch-test PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY . /src
# 1. The committed fixtures are exactly what this image's compilers produce from src/.
RUN fixtures/build.sh --check
# 2. Rewrite copies of them with the installed command: --check sees work to do, the rewrite
#    succeeds, a second --check sees none (so no site is left pristine or invalid), a second
#    rewrite changes nothing, the bad-site objects are refused (exit 2); then, when this
#    version has `ftpatch verify`, verify them: clean, except that the -fpatchable-function-
#    entry=4,2 objects may only have `prefix-misaligned` findings (their 8-byte CALL_OPS
#    literal is not 8-aligned in these fixtures, as tests/test_verify.py expects) and notes
#    (a relocatable object says what only its link or load decides); then link
#    and run each rewritten e2e variant under qemu and compare its output with the pristine
#    program's.
RUN set -eu; \
    w=$(mktemp -d); cp -r fixtures/obj "$w/"; cd "$w"; \
    good=$(ls obj/*.o | grep -v /bad-site); \
    e2e=$(ls obj/e2e/*/*.o); \
    rc=0; ftpatch rewrite --check -q $good $e2e || rc=$?; \
    [ "$rc" = 1 ] || { echo "check: rewrite --check on pristine objects exited $rc, expected 1"; exit 1; }; \
    ftpatch rewrite $good $e2e; \
    ftpatch rewrite --check $good $e2e; \
    sha256sum $good $e2e >sums; ftpatch rewrite -q $good $e2e; sha256sum -c --quiet sums; \
    ftpatch scan --json $good $e2e >/dev/null; \
    for bad in obj/bad-site.o obj/bad-site-aw.o; do \
        rc=0; ftpatch rewrite --check "$bad" 2>/dev/null || rc=$?; \
        [ "$rc" = 2 ] || { echo "check: $bad: exit $rc, expected 2"; exit 1; }; \
    done; \
    if ftpatch verify --help >/dev/null 2>&1; then \
        prefix=$(python3 -c 'import json, sys; print(" ".join(e["path"] for e in json.load(open(sys.argv[1]))["objects"] if "=4,2" in e["command"]))' /src/fixtures/MANIFEST.json); \
        rest=$(for f in $good $e2e; do case " $prefix " in *" $f "*) ;; *) echo "$f" ;; esac; done); \
        ftpatch verify $rest >verify.txt 2>&1 || { cat verify.txt; echo "check: ftpatch verify failed"; exit 1; }; \
        rc=0; ftpatch verify --json $prefix >prefix.json || rc=$?; \
        python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); bad = [x["path"] + ": " + g["check"] + ": " + g["message"] for x in d["files"] for g in x["findings"] if g["check"] != "prefix-misaligned" and g["severity"] != "note"]; print("\n".join(bad)); sys.exit(1 if bad or sys.argv[2] not in ("0", "1") else 0)' prefix.json "$rc" \
            || { echo "check: ftpatch verify (=4,2 objects, exit $rc) found more than prefix-misaligned"; exit 1; }; \
        echo "check: verify clean on $(echo $rest | wc -w) objects; on the $(echo $prefix | wc -w) =4,2 objects only prefix-misaligned findings"; \
    else \
        echo "check: this ftpatch has no verify command; skipped"; \
    fi; \
    for v in $(ls obj/e2e); do \
        aarch64-linux-gnu-gcc -pie -o "e2e-$v" obj/e2e/$v/*.o; \
        qemu-aarch64 -L /usr/aarch64-linux-gnu "./e2e-$v" >"e2e-$v.out"; \
        cmp "e2e-$v.out" /src/fixtures/src/e2e/expected.stdout; \
    done; \
    echo "check: rewrite of $(echo $good $e2e | wc -w) objects and $(ls obj/e2e | wc -l) e2e programs OK"; \
    rm -rf "$w"
# 3. The test suite, without the kernel boot and the container build (this is the container),
#    and without the tests that install a fresh venv from PyPI (no index in here).
#    CI=1: a tool the suite needs but the image lacks is a failure, not a skip.
RUN CI=1 python3 -m pytest -q -ra -p no:cacheprovider -m 'not kernel and not docker and not network' \
 && find /src -name __pycache__ -prune -exec rm -rf {} + \
 && rm -rf /src/.hypothesis

# --- ftpatch: the tool (default target) ----------------------------------------------------
FROM runtime AS ftpatch
COPY --from=venv /opt/ftpatch /opt/ftpatch
ENV PATH=/opt/ftpatch/bin:$PATH
WORKDIR /src
ENTRYPOINT ["ftpatch"]
CMD ["--help"]
