#!/usr/bin/env bash
# Builds the .deb packages of archfarm with Debian's own dpkg-deb:
#   archfarm              the CLI (/usr/bin/archfarm)
#   archfarm-coordinator  /usr/bin/archfarm-coordinator, its systemd unit (runs as the system user
#                         `archfarm`, made by the package) and /etc/archfarm/coordinator.env
#   archfarm-agent        /usr/bin/archfarm-agent, its systemd unit (runs as root: buildah builds as
#                         root and starts runc containers) and /etc/archfarm/agent.env
# The units and env files are the ones in examples/systemd/, with ExecStart pointed at /usr/bin.
# Version: the workspace Cargo.toml's; architecture: `dpkg --print-architecture`.
#
#   scripts/package-deb.sh [--bin-dir DIR] [--out DIR] [--compress xz|gzip|zstd] [--level N]
#                          [--no-strip] [PACKAGE...]
#
#   (default)       cargo build --release --locked of the three binaries, packaged from
#                   $CARGO_TARGET_DIR/release
#   --bin-dir DIR   package the binaries already in DIR (e.g. $CARGO_TARGET_DIR/debug, which the
#                   test build made); nothing is compiled. Each must answer --version with the
#                   workspace's version, so a stale binary is not packaged under a new version.
#   --out DIR       where the .debs go (default: target/debian in the clone); their paths are
#                   printed on stdout, one a line
#   --compress C    dpkg-deb's compressor (default xz)
#   --level N       its level (default dpkg-deb's; the test uses gzip at 1, seconds instead of 40)
#   --no-strip      keep the binaries' symbols (they are stripped by default)
#   PACKAGE...      only these of archfarm, archfarm-coordinator, archfarm-agent
#
# Why not cargo-deb: it is a crate to compile (minutes on every fresh 2-core CI machine) for what
# is here a page of shell; dpkg-deb and dpkg-shlibdeps (dpkg-dev) come with Debian, and packaging
# binaries built elsewhere (the test build's) is the case cargo-deb fits least.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/cache.sh
. "$ROOT/scripts/lib/cache.sh"

die() { printf 'package-deb.sh: error: %s\n' "$*" >&2; exit 1; }
note() { printf '%s\n' "$*" >&2; }

BIN_DIR=""
OUT="$ROOT/target/debian"
COMPRESS=xz
LEVEL=()
STRIP=1
PACKAGES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) BIN_DIR="${2:?--bin-dir needs a directory}"; shift 2 ;;
        --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
        --compress) COMPRESS="${2:?--compress needs xz, gzip or zstd}"; shift 2 ;;
        --level) LEVEL=(-z"${2:?--level needs a number}"); shift 2 ;;
        --no-strip) STRIP=0; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        archfarm | archfarm-coordinator | archfarm-agent) PACKAGES+=("$1"); shift ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[ "${#PACKAGES[@]}" -gt 0 ] || PACKAGES=(archfarm archfarm-coordinator archfarm-agent)
# Not none: lintian calls an uncompressed package an error.
case "$COMPRESS" in xz | gzip | zstd) ;; *) die "--compress takes xz, gzip or zstd" ;; esac

for tool in dpkg-deb dpkg-shlibdeps; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian: apt-get install dpkg-dev)"
done
[ "$STRIP" -eq 0 ] || command -v strip >/dev/null 2>&1 ||
    die "strip not found (apt-get install binutils, or --no-strip)"

# The [workspace.package] version of the workspace Cargo.toml.
VERSION="$(awk '
    /^\[/ { in_ws = ($0 == "[workspace.package]") }
    in_ws && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
' "$ROOT/Cargo.toml")"
[[ "$VERSION" =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] ||
    die "no usable [workspace.package] version in Cargo.toml (got '$VERSION')"
ARCH="$(dpkg --print-architecture)"
MAINTAINER="${ARCHFARM_DEB_MAINTAINER:-archfarm maintainers <maintainers@archfarm.invalid>}"

if [ -z "$BIN_DIR" ]; then
    BIN_DIR="$CARGO_TARGET_DIR/release"
    note "==> cargo build --release --locked (archfarm, archfarm-coordinator, archfarm-agent)"
    (cd "$ROOT" && cargo build --release --locked --bins \
        -p archfarm-cli -p archfarm-coordinator -p archfarm-agent >&2)
fi
[ -d "$BIN_DIR" ] || die "$BIN_DIR is not a directory"

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# Each package's control fields beyond the common ones.
declare -A DEPENDS=(
    # The system's CA certificates: every binary trusts the system's roots for HTTPS.
    [archfarm]="ca-certificates"
    [archfarm-coordinator]="ca-certificates, adduser"
    # What the agent runs: buildah for every build, runc for --isolation oci (the default; the agent
    # refuses to start without a working runtime). Everything else it execs (uname, sh in tests) is
    # essential. buildah brings its signature policy (containers-common) itself.
    [archfarm-agent]="ca-certificates, buildah, runc"
)
declare -A RECOMMENDS=(
    [archfarm]=""
    [archfarm-coordinator]=""
    # QEMU user-mode emulation registered with binfmt_misc: --emulate auto builds other platforms.
    [archfarm-agent]="qemu-user-static, binfmt-support"
)
declare -A SUMMARY=(
    [archfarm]="command-line client of the archfarm build farm"
    [archfarm-coordinator]="coordinator of the archfarm build farm"
    [archfarm-agent]="build agent of the archfarm build farm (buildah)"
)
# Lines of at most 80 characters (lintian's limit), each after a space as dpkg wants.
declare -A DESCRIPTION=(
    [archfarm]="archfarm build submits a multi-platform container image build to an
 archfarm coordinator, follows it and prints the pushed index digest. It takes
 docker buildx build's flags where it can (--push, --metadata-file, --iidfile,
 --label, --annotation). It also manages the farm's jobs, agents and tokens."
    [archfarm-coordinator]="The coordinator splits a job into one build per platform, leases each to
 an agent of that architecture (native first, QEMU as a fallback) and stitches
 the pushed images into one OCI image index. It runs as the system user
 archfarm, with SQLite in /var/lib/archfarm-coordinator or with PostgreSQL.
 Settings: /etc/archfarm/coordinator.env; it starts once enabled."
    [archfarm-agent]="The agent registers with an archfarm coordinator, takes the builds of its
 platforms and builds them with buildah as root, each RUN step in a runc
 container, then pushes the image. Settings and join token:
 /etc/archfarm/agent.env; it starts once enabled."
)

# Installs the unit from examples/systemd with ExecStart at /usr/bin, and checks that it took.
install_unit() {
    local name="$1" dest="$2"
    install -d -m 0755 "$dest/lib/systemd/system"
    sed "s|^ExecStart=/usr/local/bin/|ExecStart=/usr/bin/|" "$ROOT/examples/systemd/$name.service" \
        >"$dest/lib/systemd/system/$name.service"
    chmod 0644 "$dest/lib/systemd/system/$name.service"
    grep -qx "ExecStart=/usr/bin/$name" "$dest/lib/systemd/system/$name.service" ||
        die "examples/systemd/$name.service: no 'ExecStart=/usr/local/bin/$name' line to point at /usr/bin"
}

# A native package's changelog (lintian wants one): the version and the commit it was built from.
changelog() {
    local commit
    commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf '%s (%s) unstable; urgency=medium\n\n  * Built from the archfarm workspace at commit %s.\n\n -- %s  %s\n' \
        "$1" "$VERSION" "$commit" "$MAINTAINER" "$(date -R)"
}

for pkg in "${PACKAGES[@]}"; do
    bin="$pkg" # each package ships the binary of its name
    src="$BIN_DIR/$bin"
    [ -x "$src" ] || die "$src is missing or not executable"
    got="$("$src" --version 2>&1)" || die "$src --version failed: $got"
    [ "$got" = "$bin $VERSION" ] ||
        die "$src --version says '$got', not '$bin $VERSION' (a stale build?)"

    # Laid out as debian/PKG, where dpkg-shlibdeps expects a package's files.
    dir="$STAGE/debian/$pkg"
    install -d -m 0755 "$dir/DEBIAN" "$dir/usr/bin" "$dir/usr/share/doc/$pkg"
    install -m 0755 "$src" "$dir/usr/bin/$bin"
    [ "$STRIP" -eq 0 ] || strip --strip-unneeded "$dir/usr/bin/$bin"
    install -m 0644 "$ROOT/packaging/deb/copyright" "$dir/usr/share/doc/$pkg/copyright"
    changelog "$pkg" | gzip -9n >"$dir/usr/share/doc/$pkg/changelog.gz"
    # What lintian warns about on purpose, each with its reason.
    install -D -m 0644 "$ROOT/packaging/deb/$pkg.lintian-overrides" \
        "$dir/usr/share/lintian/overrides/$pkg"
    case "$pkg" in
        archfarm-coordinator | archfarm-agent)
            install_unit "$pkg" "$dir"
            short="${pkg#archfarm-}"
            install -d -m 0755 "$dir/etc/archfarm"
            # Secrets go in here (tokens, a database password): root-only.
            install -m 0600 "$ROOT/examples/systemd/$short.env.example" "$dir/etc/archfarm/$short.env"
            echo "/etc/archfarm/$short.env" >"$dir/DEBIAN/conffiles"
            for script in postinst prerm postrm; do
                install -m 0755 "$ROOT/packaging/deb/$pkg.$script" "$dir/DEBIAN/$script"
            done
            ;;
    esac

    # The shared libraries the binary links (libc6, libgcc-s1), with the versions it needs.
    printf 'Source: archfarm\n\nPackage: %s\nArchitecture: any\n' "$pkg" >"$STAGE/debian/control"
    shlibs="$(cd "$STAGE" && dpkg-shlibdeps -O "debian/$pkg/usr/bin/$bin")"
    shlibs="${shlibs#shlibs:Depends=}"
    [ -n "$shlibs" ] || die "dpkg-shlibdeps found no library dependencies for $bin"

    installed_kb="$(du -sk --exclude=DEBIAN "$dir" | cut -f1)"
    {
        echo "Package: $pkg"
        echo "Version: $VERSION"
        echo "Architecture: $ARCH"
        echo "Maintainer: $MAINTAINER"
        echo "Installed-Size: $installed_kb"
        echo "Depends: $shlibs, ${DEPENDS[$pkg]}"
        [ -z "${RECOMMENDS[$pkg]}" ] || echo "Recommends: ${RECOMMENDS[$pkg]}"
        echo "Section: devel"
        echo "Priority: optional"
        echo "Description: ${SUMMARY[$pkg]}"
        echo " ${DESCRIPTION[$pkg]}"
    } >"$dir/DEBIAN/control"

    deb="$OUT/${pkg}_${VERSION}_${ARCH}.deb"
    dpkg-deb --root-owner-group -Z"$COMPRESS" "${LEVEL[@]}" --build "$dir" "$deb" >/dev/null
    note "built $deb ($(du -h "$deb" | cut -f1))"
    echo "$deb"
done
