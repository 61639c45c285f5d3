#!/usr/bin/env bash
# Make the kernel patch series of one Linux version in git form.
#
#   scripts/make-series.sh VERSION [NNNN=FILE ...]
#   scripts/make-series.sh VERSION --from-tree
#
# VERSION is 6.1 or 6.12.  The series lives in patches/VERSION/: a cover
# letter (0000-cover-letter.patch), the patches a user applies with "git am"
# (0001-*.patch, ...), and in patches/VERSION/test/ the patches only the
# kernel e2e applies on top (the boot-time measurement).  This script reads
# them, applies each as one commit to a git tree of Debian's
# /usr/src/linux-source-VERSION.tar.xz (its subject, its description as the
# commit message, its diff), and writes them again with
# "git format-patch --cover-letter": the files in patches/VERSION/ are both
# its input and its output, and a run on an unchanged series rewrites the
# same bytes.
#
# To change a patch, any of:
# - edit its description or its diff in place (a diff must still apply:
#   keep the hunk line counts right) and run this script;
# - NNNN=FILE: take the diff of patch NNNN from FILE (a patch made with diff
#   or git, description and all), keeping the subject and description of
#   the series' own NNNN (how another branch's change to a patch comes in);
# - change the commits of branch series-VERSION in the tree this script
#   leaves (git rebase -i pristine, commit --amend, ...), then run it with
#   --from-tree: the series is then that branch's commits since "pristine"
#   (the test-only patches still come from patches/VERSION/test/).
# The cover letter's subject and text are read from 0000-cover-letter.patch
# (the text ends at the shortlog this script's identity heads): edit it there.
#
# The tree is extracted once under $FTPATCH_SERIES_WORK (default
# /var/tmp/ftpatch-series-VERSION) and its pristine state committed once
# (tag "pristine", a few minutes for 80k files); later runs reuse it.
#
# Identity, date and hash abbreviation (12, whatever the tree's object
# count) are fixed, so the output depends on the input only:
# From: "ftpatch maintainers <ftpatch@maintainers.invalid>", a role address
# under the reserved .invalid domain that names no person, and no
# Signed-off-by: the person who sends a series adds theirs.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
usage() { printf 'usage: %s 6.1|6.12 [NNNN=FILE ... | --from-tree]\n' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
VER=$1
shift
case "$VER" in 6.1 | 6.12) ;; *) usage ;; esac

SERIES=$REPO/patches/$VER
TARBALL=/usr/src/linux-source-$VER.tar.xz
WORK=${FTPATCH_SERIES_WORK:-/var/tmp/ftpatch-series-$VER}
TREE=$WORK/linux-source-$VER
BRANCH=series-$VER

export GIT_AUTHOR_NAME='ftpatch maintainers'
export GIT_AUTHOR_EMAIL='ftpatch@maintainers.invalid'
export GIT_COMMITTER_NAME=$GIT_AUTHOR_NAME
export GIT_COMMITTER_EMAIL=$GIT_AUTHOR_EMAIL
export GIT_AUTHOR_DATE=${FTPATCH_SERIES_DATE:-'2026-12-01T00:00:00Z'}
export GIT_COMMITTER_DATE=$GIT_AUTHOR_DATE
g() {
	git -C "$TREE" -c user.name="$GIT_AUTHOR_NAME" -c user.email="$GIT_AUTHOR_EMAIL" \
		-c commit.gpgsign=false -c core.autocrlf=false -c format.signOff=false \
		-c core.abbrev=12 "$@"
}
log() { printf '== %s\n' "$*" >&2; }
die() { printf 'make-series: %s\n' "$*" >&2; exit 1; }

[ -f "$TARBALL" ] || die "$TARBALL missing (scripts/install-deps.sh installs linux-source-$VER)"
[ -f "$SERIES/0000-cover-letter.patch" ] || die "$SERIES/0000-cover-letter.patch missing"

# The input, copied first: the output replaces it.
IN=$(mktemp -d)
trap 'rm -rf "$IN"' EXIT
mkdir "$IN/series" "$IN/test"
cp "$SERIES"/0000-cover-letter.patch "$IN/"
FROM_TREE=0
if [ "${1:-}" = --from-tree ]; then
	[ $# -eq 1 ] || usage
	shift
	FROM_TREE=1
else
	for p in "$SERIES"/0[0-9][0-9][0-9]-*.patch; do
		[ "$(basename "$p")" = 0000-cover-letter.patch ] || cp "$p" "$IN/series/"
	done
fi
for p in "$SERIES"/test/*.patch; do
	[ -e "$p" ] && cp "$p" "$IN/test/"
done
declare -A DIFF_FROM
for arg in "$@"; do
	[[ $arg =~ ^([0-9]{4})=(.+)$ ]] || usage
	[ -f "${BASH_REMATCH[2]}" ] || die "${BASH_REMATCH[2]}: no such file"
	DIFF_FROM[${BASH_REMATCH[1]}]=$(realpath "${BASH_REMATCH[2]}")
done

# split PATCH DIR: DIR/msg (subject, blank line, description) and DIR/diff;
# cover_text PATCH: the cover letter's subject, blank line, text (up to the
# shortlog "ftpatch maintainers (N):").  Both read the mail with
# scripts/kernel_e2e/mail.py.
mail() { PYTHONPATH=$REPO/scripts python3 -m kernel_e2e.mail "$@"; }
split() { mail split "$1" "$2"; }
cover_text() { mail cover "$1" "$GIT_AUTHOR_NAME"; }

# The pristine tree, committed once.  (Debian's .gitignore ignores every
# top-level path: hence add -f, and apply --index for the files a patch adds.)
if ! g rev-parse -q --verify refs/tags/pristine >/dev/null 2>&1; then
	log "extracting $TARBALL into $WORK and committing it (once; a few minutes)"
	rm -rf "$TREE"
	mkdir -p "$WORK"
	nice tar -xf "$TARBALL" -C "$WORK"
	[ -d "$TREE" ] || die "$TARBALL did not unpack into $TREE"
	g init -q
	nice git -C "$TREE" add -f -A .
	g commit -q --no-verify -m "Debian linux-source-$VER"
	g tag pristine
fi
if [ "$FROM_TREE" = 1 ]; then
	g rev-parse -q --verify "refs/heads/$BRANCH" >/dev/null || die "$TREE has no branch $BRANCH"
	g format-patch -q --zero-commit --no-signature -o "$IN/series" pristine.."$BRANCH"
	log "series from $TREE, branch $BRANCH: $(ls "$IN/series" | wc -l) patch(es)"
fi
g checkout -q -f -B "$BRANCH" pristine
g clean -q -fdx

# apply PATCH: one commit of its message and diff.
apply() {
	local patch=$1 name d
	name=$(basename "$patch")
	d=$IN/split-$name
	mkdir "$d"
	split "$patch" "$d"
	if [ -n "${DIFF_FROM[${name:0:4}]:-}" ]; then
		mkdir "$d/from"
		split "${DIFF_FROM[${name:0:4}]}" "$d/from"
		mv "$d/from/diff" "$d/diff"
		log "$name: diff from ${DIFF_FROM[${name:0:4}]}"
	fi
	g apply --index --whitespace=error-all "$d/diff" || die "$name does not apply"
	g commit -q --no-verify -F "$d/msg"
	log "$(g log -1 --format=%s)"
}

for p in "$IN"/series/*.patch; do
	apply "$p"
done
# format-patch takes the cover letter from the description of the branch
# it is given: the series alone is $BRANCH, with its test patches $BRANCH-test.
g checkout -q -B "$BRANCH-test"
for p in "$IN"/test/*.patch; do
	[ -e "$p" ] && apply "$p"
done

cover_text "$IN/0000-cover-letter.patch" > "$IN/cover"
g config "branch.$BRANCH.description" "$(cat "$IN/cover")"

# Written apart first: the input is replaced only by a complete output.
fp=(format-patch -q --zero-commit --no-signature --filename-max-length=100)
g "${fp[@]}" --cover-letter --cover-from-description=subject \
	-o "$IN/out" pristine.."$BRANCH"
if [ "$(g rev-parse "$BRANCH")" != "$(g rev-parse "$BRANCH-test")" ]; then
	g "${fp[@]}" -o "$IN/out/test" "$BRANCH".."$BRANCH-test"
fi
! grep -q '\*\*\* \(SUBJECT\|BLURB\) HERE \*\*\*' "$IN/out/0000-cover-letter.patch" ||
	die "git format-patch did not take the cover letter's text"
rm -f "$SERIES"/0[0-9][0-9][0-9]-*.patch "$SERIES"/test/*.patch
cp "$IN"/out/*.patch "$SERIES"/
if [ -d "$IN/out/test" ]; then
	mkdir -p "$SERIES/test"
	cp "$IN"/out/test/*.patch "$SERIES/test/"
fi
ls "$SERIES"/*.patch "$SERIES"/test/*.patch 2>/dev/null | sed "s|^$REPO/||"
