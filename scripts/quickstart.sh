#!/usr/bin/env bash
# The quick start: a whole farm on this machine, one multi-arch build, and what came out of it.
#
#   scripts/quickstart.sh          set up, build archfarm, start a registry, a coordinator (SQLite) and
#                                  two agents (one native, one emulating with QEMU), build examples/hello
#                                  for linux/amd64,linux/arm64,linux/ppc64le,linux/s390x, print the
#                                  index, the agents and the job, then stop everything it started
#   scripts/quickstart.sh --keep   the same, but leave the farm running and print its URLs
#   scripts/quickstart.sh --stop   stop a farm left running by --keep
#
# State lives in ./.quickstart/ (git-ignored). Exit code: the build's. Needs root, like the agents'
# buildah builds (chroot isolation) and the QEMU set-up.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
QS="$ROOT/.quickstart"
# Build outputs in the machine's cache (scripts/lib/cache.sh), shared with scripts/test.sh.
# shellcheck source=lib/cache.sh
. "$ROOT/scripts/lib/cache.sh"
PIDFILE="$QS/pids"
PLATFORMS="linux/amd64,linux/arm64,linux/ppc64le,linux/s390x"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'quickstart.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

KEEP=0
STOP=0
for arg in "$@"; do
    case "$arg" in
        --keep) KEEP=1 ;;
        --stop) STOP=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

# --- processes ------------------------------------------------------------------------------------
# Each started process is recorded as "PID NAME" in $PIDFILE, so --stop can find a kept farm later.
STARTED=()

# True when PID is alive and still one of ours (its command line names the program we started), so a
# recycled pid never gets a signal from us.
ours() {
    local pid="$1" name="$2"
    # The process may exit between the test and the read: that is "not ours any more", silently.
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"
}

# Stops "PID NAME" pairs: SIGTERM to all, up to 20 s to exit, then SIGKILL.
stop_pairs() {
    local pairs=("$@") i deadline alive
    [ "${#pairs[@]}" -gt 0 ] || return 0
    for ((i = 0; i < ${#pairs[@]}; i += 2)); do
        if ours "${pairs[i]}" "${pairs[i + 1]}"; then
            echo "    stopping ${pairs[i + 1]} (pid ${pairs[i]})"
            kill -TERM "${pairs[i]}" 2>/dev/null || true
        fi
    done
    deadline=$((SECONDS + 20))
    while :; do
        alive=0
        for ((i = 0; i < ${#pairs[@]}; i += 2)); do
            ours "${pairs[i]}" "${pairs[i + 1]}" && alive=1
        done
        [ "$alive" -eq 0 ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            for ((i = 0; i < ${#pairs[@]}; i += 2)); do
                if ours "${pairs[i]}" "${pairs[i + 1]}"; then kill -KILL "${pairs[i]}" 2>/dev/null || true; fi
            done
            break
        fi
        sleep 0.2
    done
}

# "PID NAME" pairs recorded in $PIDFILE, newest first (agents stop before the coordinator).
recorded_pairs() {
    [ -f "$PIDFILE" ] && tac "$PIDFILE" | tr '\n' ' '
}

# start NAME LOG PROGRAM ARGS...: starts PROGRAM in the background, output to LOG, no stdin, in its
# own session so a farm kept with --keep outlives the terminal. (setsid does not fork here: a
# background child of a script is no group leader, so $! stays the program's pid.)
start() {
    local name="$1" log="$2"
    shift 2
    setsid "$@" </dev/null >"$log" 2>&1 &
    local pid=$!
    STARTED+=("$pid" "$name")
    echo "$pid $name" >>"$PIDFILE"
    echo "    $name: pid $pid, log ${log#"$ROOT"/}"
}

# wait_for WHAT PID LOG TIMEOUT COMMAND...: polls COMMAND until it succeeds; fails early if PID died.
wait_for() {
    local what="$1" pid="$2" log="$3" timeout="$4"
    shift 4
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$log" >&2 || true
            die "$what exited; its log is above (${log#"$ROOT"/})"
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "$what not ready after ${timeout}s (log: ${log#"$ROOT"/})"
        sleep 0.2
    done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port_from() {
    local port="$1"
    while port_in_use "$port"; do
        port=$((port + 1))
        [ "$port" -lt "$(($1 + 100))" ] || die "no free port in $1..$port"
    done
    echo "$port"
}

# Stops the agents first, while the coordinator is still there to take their deregistration (a
# draining agent waits for it, so stopping everything at once ended in SIGKILLs), then the rest.
stop_farm() {
    local pairs=("$@") agents=() others=() i
    for ((i = 0; i < ${#pairs[@]}; i += 2)); do
        if [ "${pairs[i + 1]}" = archfarm-agent ]; then
            agents+=("${pairs[i]}" "${pairs[i + 1]}")
        else
            others+=("${pairs[i]}" "${pairs[i + 1]}")
        fi
    done
    stop_pairs "${agents[@]}"
    stop_pairs "${others[@]}"
}

if [ "$STOP" -eq 1 ]; then
    say "stopping the quick-start farm"
    # shellcheck disable=SC2046 # word splitting of "PID NAME" pairs is intended
    stop_farm $(recorded_pairs)
    rm -f "$PIDFILE" "$QS/urls"
    echo "    stopped"
    exit 0
fi

mkdir -p "$QS"
if [ -f "$PIDFILE" ]; then
    # shellcheck disable=SC2046
    set -- $(recorded_pairs)
    while [ "$#" -ge 2 ]; do
        if ours "$1" "$2"; then
            [ -f "$QS/urls" ] && cat "$QS/urls" >&2
            die "a farm left running by --keep is still up ($2, pid $1); stop it first: scripts/quickstart.sh --stop"
        fi
        shift 2
    done
    rm -f "$PIDFILE"
fi

KEEP_RUNNING=0
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$?
    if [ "$KEEP_RUNNING" -eq 0 ] && [ "${#STARTED[@]}" -gt 0 ]; then
        say "stopping what the quick start started"
        local reversed=() i
        for ((i = ${#STARTED[@]} - 2; i >= 0; i -= 2)); do
            reversed+=("${STARTED[i]}" "${STARTED[i + 1]}")
        done
        stop_farm "${reversed[@]}"
        rm -f "$PIDFILE" "$QS/urls"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" -eq 0 ] || echo "quickstart.sh: warning: not root; the agents' buildah builds need root" >&2

# --- set-up and build ---------------------------------------------------------------------------------
say "scripts/setup.sh"
scripts/setup.sh

say "cargo build --workspace --bins (debug: a release build takes long on small machines)"
cargo build --workspace --bins
BIN="$CARGO_TARGET_DIR/debug"
for b in archfarm archfarm-coordinator archfarm-agent; do
    [ -x "$BIN/$b" ] || die "$BIN/$b was not built"
done

# --- the farm -------------------------------------------------------------------------------------
mkdir -p "$QS/logs" "$QS/registry" "$QS/coordinator" "$QS/agents/native" "$QS/agents/emu"
REGISTRY_PORT="$(free_port_from 5000)"
COORDINATOR_PORT="$(free_port_from 8080)"
REGISTRY="127.0.0.1:$REGISTRY_PORT"
COORDINATOR="http://127.0.0.1:$COORDINATOR_PORT"
if [ ! -s "$QS/join-token" ]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$QS/join-token")
fi
JOIN_TOKEN="$(cat "$QS/join-token")"

say "starting a registry on $REGISTRY (data in .quickstart/registry/data)"
cat >"$QS/registry/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $QS/registry/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
start docker-registry "$QS/logs/registry.log" docker-registry serve "$QS/registry/config.yml"
wait_for "the registry" "${STARTED[-2]}" "$QS/logs/registry.log" 60 curl -fsS "http://$REGISTRY/v2/"

say "starting the coordinator on $COORDINATOR (SQLite in .quickstart/coordinator)"
start archfarm-coordinator "$QS/logs/coordinator.log" "$BIN/archfarm-coordinator" \
    --listen "127.0.0.1:$COORDINATOR_PORT" --data-dir "$QS/coordinator" --join-token "$JOIN_TOKEN"
wait_for "the coordinator" "${STARTED[-2]}" "$QS/logs/coordinator.log" 90 curl -fsS "$COORDINATOR/healthz"

say "starting two agents: 'native' (this machine's platform) and 'emu' (QEMU for the others)"
start archfarm-agent "$QS/logs/agent-native.log" "$BIN/archfarm-agent" --coordinator "$COORDINATOR" \
    --join-token "$JOIN_TOKEN" --name native --work-dir "$QS/agents/native" --capacity 1 --emulate none
NATIVE_PID="${STARTED[-2]}"
start archfarm-agent "$QS/logs/agent-emu.log" "$BIN/archfarm-agent" --coordinator "$COORDINATOR" \
    --join-token "$JOIN_TOKEN" --name emu --work-dir "$QS/agents/emu" --capacity 2 --emulate auto
EMU_PID="${STARTED[-2]}"
# shellcheck disable=SC2317 # called through wait_for
agent_listed() {
    local agents
    agents="$(curl -fsS "$COORDINATOR/api/v1/agents")" && grep -Eq "\"name\" *: *\"$1\"" <<<"$agents"
}
wait_for "agent native" "$NATIVE_PID" "$QS/logs/agent-native.log" 60 agent_listed native
wait_for "agent emu" "$EMU_PID" "$QS/logs/agent-emu.log" 60 agent_listed emu

cat >"$QS/urls" <<EOF
registry:     http://$REGISTRY   (e.g. skopeo inspect --tls-verify=false docker://$REGISTRY/hello:latest)
coordinator:  $COORDINATOR   (export ARCHFARM_COORDINATOR=$COORDINATOR)
dashboard:    $COORDINATOR/   (jobs, agents, live logs; metrics at $COORDINATOR/metrics)
join token:   .quickstart/join-token
logs:         .quickstart/logs/
stop:         scripts/quickstart.sh --stop
EOF

# --- the build --------------------------------------------------------------------------------------
export ARCHFARM_COORDINATOR="$COORDINATOR"
TAG="$REGISTRY/hello:latest"
say "archfarm build --progress plain --platform $PLATFORMS -t $TAG examples/hello"
set +e
"$BIN/archfarm" build --progress plain --platform "$PLATFORMS" -t "$TAG" examples/hello | tee "$QS/build.out"
BUILD_RC=${PIPESTATUS[0]}
set -e

if [ "$BUILD_RC" -eq 0 ]; then
    say "the image index at $TAG (read back with skopeo)"
    index="$(skopeo inspect --raw --tls-verify=false "docker://$TAG")"
    if command -v jq >/dev/null 2>&1; then jq . <<<"$index"; else echo "$index"; fi
    echo "digest: $(grep -v '^[[:space:]]*$' "$QS/build.out" | tail -n1)"
else
    echo "quickstart.sh: the build failed (exit code $BUILD_RC); logs are in .quickstart/logs/" >&2
fi

say "archfarm agents"
"$BIN/archfarm" agents || true

JOB_ID="$(curl -fsS "$COORDINATOR/api/v1/jobs?limit=1" | grep -Eo '"id" *: *"[0-9a-f-]{36}"' | head -n1 |
    grep -Eo '[0-9a-f-]{36}' || true)"
if [ -n "$JOB_ID" ]; then
    say "archfarm job $JOB_ID"
    "$BIN/archfarm" job "$JOB_ID" || true
fi

if [ "$KEEP" -eq 1 ]; then
    KEEP_RUNNING=1
    say "the farm keeps running (--keep)"
    cat "$QS/urls"
fi
exit "$BUILD_RC"
