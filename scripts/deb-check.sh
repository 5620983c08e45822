#!/usr/bin/env bash
# Packages archfarm's binaries as .debs (scripts/package-deb.sh), checks them with lintian, installs
# the three on this machine with `apt-get install ./….deb` (offline: a dry run first must show that
# nothing else would be installed, which scripts/setup.sh sees to), checks what got installed
# (--version from /usr/bin, the units with systemd-analyze verify, `dpkg -L`, the conffiles, the
# coordinator's system user), then purges them, always, even when a check failed, and checks that
# nothing is left. Needs root (apt-get).
#
#   scripts/deb-check.sh [BIN_DIR]   BIN_DIR: binaries to package (default $CARGO_TARGET_DIR/debug,
#                                    which scripts/test.sh's build made); nothing is compiled
#
# On a machine where these packages are installed for real it refuses to run, rather than replace
# and purge them; one that a killed run of this script left installed it purges first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/cache.sh
. "$ROOT/scripts/lib/cache.sh"

PACKAGES=(archfarm archfarm-coordinator archfarm-agent)
BIN_DIR="${1:-$CARGO_TARGET_DIR/debug}"
WORK="$ARCHFARM_CACHE_DIR/deb-check"
# Present while this script's packages are installed: tells a leftover of a killed run from a real
# installation.
MARKER="$WORK/installed-by-deb-check"

say() { printf '==> %s\n' "$*"; }
die() { printf 'deb-check.sh: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (apt-get install and purge)"

installed() { # those of ours dpkg has in any state but not-installed (e.g. config files left),
    local p s found=() # on one line
    for p in "${PACKAGES[@]}"; do
        s="$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" || continue
        [ "${s:1:1}" = n ] || found+=("$p")
    done
    echo "${found[*]}"
}

purge() {
    local left
    local left
    read -r -a left <<<"$(installed)"
    if [ "${#left[@]}" -gt 0 ]; then
        say "apt-get purge -y ${left[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q -o Dpkg::Use-Pty=0 "${left[@]}"
    fi
    rm -f "$MARKER"
}

if [ -n "$(installed)" ]; then
    [ -f "$MARKER" ] || die "$(installed) installed on this machine, not by this script: it \
would replace and purge them; remove them first (apt-get purge archfarm archfarm-coordinator archfarm-agent)"
    say "a previous run left its packages installed; purging them first"
    purge
fi
getent passwd archfarm >/dev/null &&
    die "a user 'archfarm' exists while archfarm-coordinator is not installed: this check would remove it"

VERSION="$(awk '/^\[/ { w = ($0 == "[workspace.package]") } w && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$ROOT/Cargo.toml")"
ARCH="$(dpkg --print-architecture)"
rm -rf "$WORK/debs"
mkdir -p "$WORK/debs"
# apt reads local .debs as its unprivileged _apt user: the directory must be world-readable.
chmod 0755 "$WORK" "$WORK/debs"

say "scripts/package-deb.sh --bin-dir $BIN_DIR --compress gzip --level 1"
mapfile -t DEBS < <("$ROOT/scripts/package-deb.sh" --bin-dir "$BIN_DIR" --out "$WORK/debs" \
    --compress gzip --level 1)
[ "${#DEBS[@]}" -eq 3 ] || die "package-deb.sh made ${#DEBS[@]} packages, not 3"
for pkg in "${PACKAGES[@]}"; do
    deb="$WORK/debs/${pkg}_${VERSION}_${ARCH}.deb"
    [ -f "$deb" ] || die "no $deb"
    [ "$(dpkg-deb -f "$deb" Version)" = "$VERSION" ] || die "$deb: Version is not $VERSION"
    [ "$(dpkg-deb -f "$deb" Architecture)" = "$ARCH" ] || die "$deb: Architecture is not $ARCH"
done
agent_depends="$(dpkg-deb -f "$WORK/debs/archfarm-agent_${VERSION}_${ARCH}.deb" Depends)"
for dep in buildah runc libc6; do
    grep -qw "$dep" <<<"$agent_depends" || die "archfarm-agent does not depend on $dep: $agent_depends"
done

say "lintian --fail-on error,warning"
rc=0
lintian --fail-on error,warning "${DEBS[@]}" >"$WORK/lintian.out" 2>&1 || rc=$?
grep -v '^running with root privileges' "$WORK/lintian.out" || true
[ "$rc" -eq 0 ] || die "lintian found problems (above; exit $rc)"

# From here on the packages may be installed: purge them however the script ends.
trap 'rc=$?; purge || rc=1; exit $rc' EXIT
touch "$MARKER"
LOCAL=()
for deb in "${DEBS[@]}"; do LOCAL+=("./${deb##*/}"); done
# Offline: apt must find every dependency (and recommendation) installed already, so a dry run
# may install only these three. (apt 2.6's --no-download refuses local .debs: "Pathname to install
# is not absolute".)
plan="$(cd "$WORK/debs" && apt-get install -s -q "${LOCAL[@]}" | sed -n 's/^Inst \([^ ]*\) .*/\1/p' | sort)"
[ "$plan" = "$(printf '%s\n' "${PACKAGES[@]}" | sort)" ] ||
    die "apt-get would install more than the three packages (not on this machine yet; scripts/setup.sh installs them): ${plan//$'\n'/ }"
say "apt-get install -y ${LOCAL[*]}"
(cd "$WORK/debs" && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 "${LOCAL[@]}")

say "--version from /usr/bin"
for bin in "${PACKAGES[@]}"; do
    [ "$(command -v "$bin")" = "/usr/bin/$bin" ] || die "$bin is not /usr/bin/$bin on PATH"
    got="$("/usr/bin/$bin" --version)"
    echo "\$ $bin --version"
    echo "$got"
    [ "$got" = "$bin $VERSION" ] || die "/usr/bin/$bin --version says '$got', not '$bin $VERSION'"
done

say "dpkg -L: each package's files"
declare -A WANT=(
    [archfarm]="/usr/bin/archfarm
/usr/share/doc/archfarm/changelog.gz
/usr/share/doc/archfarm/copyright
/usr/share/lintian/overrides/archfarm"
    [archfarm-coordinator]="/etc/archfarm/coordinator.env
/lib/systemd/system/archfarm-coordinator.service
/usr/bin/archfarm-coordinator
/usr/share/doc/archfarm-coordinator/changelog.gz
/usr/share/doc/archfarm-coordinator/copyright
/usr/share/lintian/overrides/archfarm-coordinator"
    [archfarm-agent]="/etc/archfarm/agent.env
/lib/systemd/system/archfarm-agent.service
/usr/bin/archfarm-agent
/usr/share/doc/archfarm-agent/changelog.gz
/usr/share/doc/archfarm-agent/copyright
/usr/share/lintian/overrides/archfarm-agent"
)
for pkg in "${PACKAGES[@]}"; do
    got="$(dpkg -L "$pkg" | while read -r f; do [ -d "$f" ] || echo "$f"; done | sort)"
    if [ "$got" != "$(sort <<<"${WANT[$pkg]}")" ]; then
        diff <(sort <<<"${WANT[$pkg]}") <(echo "$got") >&2 || true
        die "dpkg -L $pkg lists other files than expected (diff: - expected, + listed)"
    fi
    mapfile -t files <<<"$got"
    echo "$pkg:"
    printf '  %s\n' "${files[@]}"
    for f in "${files[@]}"; do [ -e "$f" ] || die "$f is listed by dpkg -L $pkg but missing"; done
done

say "conffiles, modes and the coordinator's user"
for short in coordinator agent; do
    f="/etc/archfarm/$short.env"
    dpkg-query -W -f='${Conffiles}\n' "archfarm-$short" | grep -q " $f " ||
        die "$f is not a conffile of archfarm-$short"
    [ "$(stat -c '%a %U' "$f")" = "600 root" ] || die "$f is $(stat -c '%a %U' "$f"), not 600 root"
done
getent passwd archfarm >/dev/null || die "archfarm-coordinator made no user 'archfarm'"
echo "user: $(getent passwd archfarm)"
grep -qx 'User=archfarm' /lib/systemd/system/archfarm-coordinator.service ||
    die "the coordinator's unit does not run as archfarm"
grep -q '^User=' /lib/systemd/system/archfarm-agent.service &&
    die "the agent's unit must run as root (buildah builds as root)"
# The coordinator as its user, as the unit starts it: its data dir writable, --version and a start.
say "the coordinator started as 'archfarm' on loopback, as the unit would (SQLite in its data dir)"
DATA="$(mktemp -d)"
chown archfarm:archfarm "$DATA"
runuser -u archfarm -- /usr/bin/archfarm-coordinator --listen 127.0.0.1:0 --data-dir "$DATA" \
    >"$WORK/coordinator.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    grep -q 'listening on' "$WORK/coordinator.log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
kill "$pid" 2>/dev/null || true
wait "$pid" || true
grep -q 'listening on' "$WORK/coordinator.log" && [ -s "$DATA/archfarm.db" ] ||
    { cat "$WORK/coordinator.log" >&2; die "the coordinator did not start as archfarm"; }
grep 'listening on' "$WORK/coordinator.log"
rm -rf "$DATA"

if command -v systemd-analyze >/dev/null 2>&1; then
    say "systemd-analyze verify"
    for unit in archfarm-coordinator archfarm-agent; do
        # verify prints what it finds wrong and exits non-zero for errors; warnings are failures too.
        out="$(systemd-analyze verify "/lib/systemd/system/$unit.service" 2>&1)" ||
            { echo "$out" >&2; die "systemd-analyze verify $unit.service failed"; }
        if [ -n "$out" ]; then
            echo "$out" >&2
            die "systemd-analyze verify $unit.service complained"
        fi
        echo "$unit.service: ok"
    done
else
    say "systemd-analyze not found: units not verified (apt-get install systemd)"
fi

# Enabled, as an admin would, so the purge must also disable them.
say "systemctl enable (links only; purge must remove them)"
systemctl enable archfarm-coordinator.service archfarm-agent.service 2>&1
for unit in archfarm-coordinator archfarm-agent; do
    [ -L "/etc/systemd/system/multi-user.target.wants/$unit.service" ] || die "$unit is not enabled"
done

trap - EXIT
purge

say "nothing left after the purge"
[ -z "$(installed)" ] || die "dpkg still knows: $(installed)"
left=()
for pkg in "${PACKAGES[@]}"; do
    for f in ${WANT[$pkg]}; do [ ! -e "$f" ] || left+=("$f"); done
done
for f in /etc/archfarm /var/lib/archfarm-coordinator /var/lib/archfarm-agent \
    /etc/systemd/system/multi-user.target.wants/archfarm-agent.service \
    /etc/systemd/system/multi-user.target.wants/archfarm-coordinator.service; do
    [ ! -e "$f" ] && [ ! -L "$f" ] || left+=("$f")
done
[ "${#left[@]}" -eq 0 ] || die "left after the purge: ${left[*]}"
getent passwd archfarm >/dev/null && die "the user 'archfarm' is left after the purge"
getent group archfarm >/dev/null && die "the group 'archfarm' is left after the purge"
say "packages built, installed, checked and purged: nothing left"
