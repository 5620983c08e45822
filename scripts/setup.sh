#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine to build, test and demo archfarm:
#   * the container tools the agents and the tests use (buildah, runc, skopeo, umoci, docker-registry),
#   * headless Chromium and its WebDriver (chromium, chromium-driver) for the dashboard's browser test,
#   * htpasswd (apache2-utils) and openssl for the authenticated TLS registry of tests/registry_auth.rs,
#   * QEMU user-mode emulation registered with binfmt_misc (arm64, ppc64le, s390x, arm, riscv64),
#   * the example's per-architecture base file systems (a static busybox from Debian for each),
#   * examples/realworld's Debian bookworm + gcc base file systems for amd64 and arm64 (mmdebstrap,
#     minutes the first time, then cached in $ARCHFARM_CACHE_DIR/rootfs/; the benchmark makes the
#     ppc64el and s390x ones when it first needs them),
#   * cargo-fuzz and the nightly toolchain it needs, for the fuzz targets in fuzz/ (scripts/fuzz.sh),
#   * cargo-nextest, which runs the tests (scripts/test.sh),
#   * dpkg-dev, lintian and systemd (systemd-analyze) for the .deb packages' check
#     (scripts/package-deb.sh, scripts/deb-check.sh), and what those packages depend on.
# Idempotent and non-interactive: when everything is in place it only checks and returns quickly.
# Needs root (or sudo) for apt-get, mount and binfmt_misc.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTFS="$ROOT/examples/hello/rootfs"
# shellcheck source=lib/cache.sh
. "$ROOT/scripts/lib/cache.sh"
CACHE="$ARCHFARM_CACHE_DIR/debs"
BINFMT=/proc/sys/fs/binfmt_misc
# qemu handler names (the suffix of /proc/sys/fs/binfmt_misc/qemu-NAME) to register.
# x86_64 only matters on a non-x86 host (the example's amd64 base); it is skipped on x86_64 itself.
QEMU_HANDLERS=(aarch64 ppc64le s390x arm riscv64 x86_64)
# Debian architecture -> OCI architecture of the example's base file systems.
declare -A OCI_ARCH=([amd64]=amd64 [arm64]=arm64 [ppc64el]=ppc64le [s390x]=s390x)
# Debian architecture -> what `uname -m` says inside it (natively or under QEMU).
declare -A MACHINE=([amd64]=x86_64 [arm64]=aarch64 [ppc64el]=ppc64le [s390x]=s390x)
DEB_ARCHES=(amd64 arm64 ppc64el s390x)

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }
is_elf() { [ -s "$1" ] && cmp -s -n 4 "$1" <(printf '\177ELF'); }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
    note "not root: using sudo for privileged steps"
else
    die "run as root (or install sudo): apt-get, mount and binfmt_misc need it"
fi
as_root() { "${SUDO[@]}" "$@"; }

if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    die "this script supports Debian and Ubuntu (dpkg and apt-get); install the tools listed at its top by hand"
fi

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
# A mirror caught mid-sync fails one index ("File has unexpected size"); that is transient, so
# retry, and when some index still fails carry on: the install or download that needs a missing
# index fails with apt's own message, while the indexes that did arrive serve the rest.
apt_update() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        local attempt
        for attempt in 1 2 3; do
            say "apt-get update${attempt:+ (attempt $attempt of 3)}"
            if as_root apt-get update -qq; then
                APT_UPDATED=1
                return 0
            fi
            [ "$attempt" -lt 3 ] && sleep $((attempt * 10))
        done
        note "warning: apt-get update failed 3 times; carrying on with the package lists it did fetch"
        APT_UPDATED=1
    fi
}

# --- Rust toolchain ---------------------------------------------------------------------------------
say "checking the Rust toolchain"
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust 1.80 or newer with rustup (https://rustup.rs), then run this again"
note "$(cargo --version)"
# CI runs rustfmt and clippy; add them when rustup manages the toolchain and they are missing.
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            say "rustup component add $component"
            rustup component add "$component"
        else
            note "warning: cargo $component is missing (CI's lint step needs it)"
        fi
    fi
done

# cargo-fuzz (libFuzzer) runs the fuzz targets in fuzz/; it builds with the nightly toolchain.
if ! cargo +nightly --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        say "rustup toolchain install nightly --profile minimal"
        rustup toolchain install nightly --profile minimal
    else
        note "warning: no nightly toolchain (cargo +nightly): scripts/fuzz.sh needs one"
    fi
fi
if cargo fuzz --version >/dev/null 2>&1; then
    note "$(cargo fuzz --version)"
else
    say "cargo install cargo-fuzz --locked"
    cargo install --quiet cargo-fuzz --locked
fi

# cargo-nextest runs the tests: each test in its own process, the slowest first, all test binaries
# sharing the cores, with a per-test time limit and a count of what ran.
if cargo nextest --version >/dev/null 2>&1; then
    note "$(cargo nextest --version | head -n1)"
else
    say "cargo install cargo-nextest --locked"
    cargo install --quiet cargo-nextest --locked
fi

# --- packages -----------------------------------------------------------------------------------------
# command -> Debian package providing it
declare -A NEED=(
    [buildah]=buildah
    # The agents run each RUN step in a runc container (--isolation oci, their default).
    [runc]=runc
    [skopeo]=skopeo
    [umoci]=umoci
    [docker-registry]=docker-registry
    [qemu-aarch64-static]=qemu-user-static
    [update-binfmts]=binfmt-support
    [curl]=curl
    [mount]=mount
    # The dashboard's browser test drives headless Chromium through chromedriver (WebDriver).
    [chromium]=chromium
    [chromedriver]=chromium-driver
    # bcrypt htpasswd files for the authenticated registry of tests/registry_auth.rs; openssl makes
    # its self-signed CA and certificate.
    [htpasswd]=apache2-utils
    [openssl]=openssl
    # The Debian + gcc base file systems of examples/realworld (scripts/realworld-rootfs.sh).
    [mmdebstrap]=mmdebstrap
    # mmdebstrap only recommends it (and recommends are not installed), but it refuses foreign
    # architectures without it: "install arch-test for foreign architecture support".
    [arch-test]=arch-test
    # The .deb packages (scripts/package-deb.sh) and their check (scripts/deb-check.sh): it
    # installs them offline, so what they depend on must be here already (buildah, runc, the
    # recommended QEMU above; adduser, ca-certificates below).
    [dpkg-shlibdeps]=dpkg-dev
    [strip]=binutils
    [lintian]=lintian
    [systemd-analyze]=systemd
    [adduser]=adduser
)
missing=()
for cmd in "${!NEED[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
# buildah and skopeo refuse to run without a signature policy, shipped by containers-common on Ubuntu
# and Debian 13 and by golang-github-containers-common on Debian 12 (which has no containers-common).
if [ ! -f /etc/containers/policy.json ]; then
    apt_update
    if apt-cache show containers-common >/dev/null 2>&1; then
        missing+=(containers-common)
    else
        missing+=(golang-github-containers-common)
    fi
fi
# Chromium only recommends a font; without one the dashboard screenshots show boxes for text.
[ -d /usr/share/fonts/truetype/liberation ] || missing+=(fonts-liberation)
# Every archfarm package depends on the system's CA certificates.
dpkg-query -W -f='${Status}' ca-certificates 2>/dev/null | grep -q 'ok installed' ||
    missing+=(ca-certificates)
if [ "${#missing[@]}" -gt 0 ]; then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    say "installing: ${missing[*]}"
    apt_update
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    say "packages present: buildah runc skopeo umoci docker-registry qemu-user-static binfmt-support curl chromium chromium-driver apache2-utils openssl mmdebstrap arch-test dpkg-dev binutils lintian systemd adduser ca-certificates"
fi

# --- binfmt_misc and QEMU handlers ------------------------------------------------------------------
if ! mountpoint -q "$BINFMT" 2>/dev/null; then
    say "mounting binfmt_misc at $BINFMT"
    as_root mount -t binfmt_misc binfmt_misc "$BINFMT" ||
        die "cannot mount binfmt_misc (in a container, run it privileged or mount it on the host)"
fi
host_arch="$(uname -m)"
for name in "${QEMU_HANDLERS[@]}"; do
    conf="/usr/lib/binfmt.d/qemu-$name.conf"
    entry="$BINFMT/qemu-$name"
    if [ -e "$entry" ]; then
        if head -n1 "$entry" | grep -qx disabled; then
            say "enabling qemu-$name"
            echo 1 | as_root tee "$entry" >/dev/null
        fi
        note "qemu-$name: $(head -n1 "$entry")"
        continue
    fi
    if [ "$name" = "$host_arch" ]; then
        note "qemu-$name: not needed, this machine is $host_arch"
        continue
    fi
    [ -f "$conf" ] || die "$conf is missing (is qemu-user-static installed?)"
    # The .conf files are in binfmt_misc's own register format; the kernel parses the \x escapes.
    line="$(grep -v -e '^#' -e '^[[:space:]]*$' "$conf" | head -n1)"
    interpreter="$(printf '%s' "$line" | cut -d: -f7)"
    [ -x "$interpreter" ] || die "qemu-$name: interpreter $interpreter from $conf is missing"
    say "registering qemu-$name ($interpreter)"
    printf '%s' "$line" | as_root tee "$BINFMT/register" >/dev/null
    [ -e "$entry" ] || die "registering qemu-$name failed"
done

# --- the example's base file systems --------------------------------------------------------------
rootfs_missing=()
for deb_arch in "${DEB_ARCHES[@]}"; do
    is_elf "$ROOTFS/${OCI_ARCH[$deb_arch]}/bin/busybox" || rootfs_missing+=("$deb_arch")
done
if [ "${#rootfs_missing[@]}" -gt 0 ]; then
    native_deb_arch="$(dpkg --print-architecture)"
    foreign="$(dpkg --print-foreign-architectures)"
    for deb_arch in "${rootfs_missing[@]}"; do
        if [ "$deb_arch" != "$native_deb_arch" ] && ! grep -qx "$deb_arch" <<<"$foreign"; then
            say "dpkg --add-architecture $deb_arch"
            as_root dpkg --add-architecture "$deb_arch"
            APT_UPDATED=0 # the new architecture's package lists must be fetched
        fi
    done
    for deb_arch in "${rootfs_missing[@]}"; do
        if ! apt-cache show "busybox-static:$deb_arch" >/dev/null 2>&1; then
            apt_update
            break
        fi
    done
    mkdir -p "$CACHE"
    for deb_arch in "${rootfs_missing[@]}"; do
        oci_arch="${OCI_ARCH[$deb_arch]}"
        dir="$CACHE/$deb_arch"
        mkdir -p "$dir"
        deb="$(find "$dir" -maxdepth 1 -name 'busybox-static_*.deb' | sort | tail -n1)"
        if [ -z "$deb" ]; then
            say "apt-get download busybox-static:$deb_arch"
            # Downloading as root into a directory _apt cannot write to is fine; say so instead of warning.
            (cd "$dir" && apt-get download -qq -o APT::Sandbox::User=root "busybox-static:$deb_arch")
            deb="$(find "$dir" -maxdepth 1 -name 'busybox-static_*.deb' | sort | tail -n1)"
            [ -n "$deb" ] || die "apt-get download busybox-static:$deb_arch produced no .deb"
        fi
        tmp="$(mktemp -d)"
        dpkg-deb -x "$deb" "$tmp"
        # Other files are called busybox too (an initramfs hook), so look where the binary lives.
        busybox=""
        for candidate in "$tmp/bin/busybox" "$tmp/usr/bin/busybox"; do
            if is_elf "$candidate"; then busybox="$candidate"; break; fi
        done
        [ -n "$busybox" ] || { rm -rf "$tmp"; die "no busybox binary in bin/ or usr/bin/ inside $deb"; }
        mkdir -p "$ROOTFS/$oci_arch/bin"
        install -m 0755 "$busybox" "$ROOTFS/$oci_arch/bin/busybox"
        rm -rf "$tmp"
        say "placed $(basename "$deb") at examples/hello/rootfs/$oci_arch/bin/busybox"
    done
else
    say "example base file systems present: examples/hello/rootfs/{amd64,arm64,ppc64le,s390x}/bin/busybox"
fi

# --- check that emulation really runs foreign binaries ---------------------------------------------
say "checking emulation: uname -m of each base file system's busybox"
for deb_arch in "${DEB_ARCHES[@]}"; do
    oci_arch="${OCI_ARCH[$deb_arch]}"
    machine="$("$ROOTFS/$oci_arch/bin/busybox" uname -m 2>&1)" || true
    if [ "$machine" = "${MACHINE[$deb_arch]}" ]; then
        note "linux/$oci_arch: $machine"
    else
        die "linux/$oci_arch: the $oci_arch busybox does not run as ${MACHINE[$deb_arch]} here (got: '$machine'); is its qemu handler registered?"
    fi
done
# --- examples/realworld's base file systems (tests/realworld.rs) -------------------------------------
say "realworld base file systems (scripts/realworld-rootfs.sh; minutes each the first time)"
"$ROOT/scripts/realworld-rootfs.sh" amd64 arm64 | while read -r tar; do note "$tar"; done
say "setup complete"
