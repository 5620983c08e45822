#!/usr/bin/env bash
# Makes the team-like base file systems of examples/realworld and the `realworld` benchmark: a
# Debian bookworm root file system with gcc and libc6-dev, one tar per Debian architecture, made by
# mmdebstrap (foreign architectures run under QEMU through binfmt_misc: minutes each).
#
#   scripts/realworld-rootfs.sh [DEB_ARCH...]     default: amd64 arm64
#
# Each tar is made once per machine and kept outside the clone, in $ARCHFARM_CACHE_DIR/rootfs/
# (scripts/lib/cache.sh), as bookworm-gcc-DEB_ARCH.tar beside its .sha256. A tar is written under a
# temporary name and renamed only when mmdebstrap succeeded, and a kept tar is checked against its
# sha256 before it is trusted, so an interrupted or damaged one is made again rather than used.
# Runs of this script for the same architecture wait for each other (flock), so a test and the
# benchmark started together make each tar once. Prints the path of each tar, one a line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/cache.sh
. "$ROOT/scripts/lib/cache.sh"
DIR="$ARCHFARM_CACHE_DIR/rootfs"
MIRROR="${ARCHFARM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
mkdir -p "$DIR"

[ "$#" -gt 0 ] || set -- amd64 arm64
command -v mmdebstrap >/dev/null 2>&1 ||
    { echo "realworld-rootfs.sh: mmdebstrap is missing: run scripts/setup.sh (or apt-get install mmdebstrap)" >&2; exit 1; }

for arch in "$@"; do
    case "$arch" in
        amd64 | arm64 | ppc64el | s390x) ;;
        *) echo "realworld-rootfs.sh: unknown Debian architecture '$arch' (amd64, arm64, ppc64el, s390x)" >&2; exit 2 ;;
    esac
    tar="$DIR/bookworm-gcc-$arch.tar"
    (
        flock 9
        if [ -s "$tar" ] && [ -s "$tar.sha256" ] && (cd "$DIR" && sha256sum --quiet -c "$(basename "$tar").sha256"); then
            exit 0
        fi
        rm -f "$tar" "$tar.sha256"
        tmp="$tar.tmp.$$"
        trap 'rm -f "$tmp"' EXIT
        echo "realworld-rootfs.sh: making $tar with mmdebstrap (foreign architectures take minutes)" >&2
        # /dev is left out: a container gets its own, and device nodes in a layer are refused by
        # rootless stores. apt's lists are removed by mmdebstrap's own clean-up, keeping the tar small.
        mmdebstrap --quiet --variant=minbase --architectures="$arch" --include=gcc,libc6-dev \
            --skip=output/dev --format=tar bookworm "$tmp" "$MIRROR" >&2
        (cd "$DIR" && sha256sum "$(basename "$tmp")" | sed "s/\.tmp\.$$\$//") >"$tar.sha256.tmp"
        mv "$tmp" "$tar"
        mv "$tar.sha256.tmp" "$tar.sha256"
    ) 9>"$tar.lock"
    echo "$tar"
done
