#!/usr/bin/env bash
# Prepares the machine, builds archfarm and runs every check: unit tests and the end-to-end tests
# under tests/ (real registry, coordinator, agents, buildah and QEMU) on SQLite, then every test
# whose outcome can depend on the database again on PostgreSQL, rustfmt and clippy, the Helm chart's
# offline check, the .deb packages installed and purged, the CI recipes' linters, and a short run of
# each fuzz target. Ends with a table of the steps, how long each
# took and how many tests ran in each pass. `.ci/run` is this script.
#
# Build outputs live outside the clone, under $ARCHFARM_CACHE_DIR (/var/cache/archfarm for root; see
# scripts/lib/cache.sh), so a machine that has built archfarm before only compiles what changed.
# The end-to-end tests need root (buildah and binfmt_misc); CI runs this as root.
# Extra arguments go to both test passes as cargo-nextest filters, e.g.
# `scripts/test.sh -E 'binary_id(archfarm-e2e::faults)'` or `scripts/test.sh four_platforms`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=lib/cache.sh
. scripts/lib/cache.sh
# shellcheck source=lib/steps.sh
. scripts/lib/steps.sh

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: warning: not root; the end-to-end tests need root and will fail" >&2
fi
echo "build cache: $ARCHFARM_CACHE_DIR (cargo: $CARGO_TARGET_DIR)"

PG_URL_FILE="$(mktemp)"
TOTALS_FILE="$(mktemp)"

start_postgres() {
    # A PostgreSQL server on 127.0.0.1:5432 (started or installed when missing); the URL comes last.
    scripts/postgres.sh | tee "$PG_URL_FILE"
}

build() {
    # One build for every pass: `cargo test` unifies the dev-dependencies' features (tokio's
    # test-util), so a separate `cargo build --bins` or a `-p` selection would compile tokio and
    # all above it a second time. It builds the binaries the end-to-end tests start, too.
    cache_trim
    cargo test --workspace --locked --no-run
    local bin
    for bin in archfarm archfarm-coordinator archfarm-agent; do
        [ -x "$CARGO_TARGET_DIR/debug/$bin" ] || {
            echo "test.sh: $CARGO_TARGET_DIR/debug/$bin was not built" >&2
            return 1
        }
    done
}

# Runs cargo-nextest, shows its output, and records how many tests ran, passed and failed.
nextest_pass() {
    local log rc=0 run passed
    log="$(mktemp)"
    cargo nextest run --workspace --locked "$@" 2>&1 | tee "$log" || rc=$?
    # nextest's closing line: "Summary [ 212.3s] 342 tests run: 340 passed, 2 failed, …".
    read -r run passed < <(sed -nE \
        's/.*Summary \[[^]]*\] +([0-9]+) tests? run: ([0-9]+) passed.*/\1 \2/p' "$log" | tail -n1) || true
    rm -f "$log"
    if [ -n "${run:-}" ]; then
        echo "$run run: $passed passed, $((run - passed)) failed" >"$STEP_TESTS_FILE"
        echo "$passed $((run - passed))" >>"$TOTALS_FILE"
    fi
    return "$rc"
}

sqlite_pass() {
    # Every test; each coordinator on its own SQLite file. tests/replicas.rs always uses
    # PostgreSQL and runs here too, whatever the caller's environment says.
    unset ARCHFARM_TEST_POSTGRES
    nextest_pass "$@"
}

postgres_pass() {
    # The tests whose outcome can depend on the database, each coordinator and each unit test's
    # store on a fresh PostgreSQL database: the `postgres` profile in .config/nextest.toml says
    # which and why.
    ARCHFARM_TEST_POSTGRES="$(tail -n1 "$PG_URL_FILE")" nextest_pass --profile postgres "$@"
}

# The closing line of the table: every test run in every pass.
tests_total() {
    [ -s "$TOTALS_FILE" ] || return 0
    awk '{ p += $1; f += $2 } END { printf "tests: %d passed, %d failed\n", p, f }' "$TOTALS_FILE"
}
trap 'step_table; tests_total; rm -f "$PG_URL_FILE" "$TOTALS_FILE"' EXIT

run_step "set-up (scripts/setup.sh)" scripts/setup.sh
run_step "PostgreSQL (scripts/postgres.sh)" start_postgres
run_step "cargo fmt --check" cargo fmt --all -- --check
run_step "build (cargo test --no-run)" build
run_step "clippy -D warnings" cargo clippy --workspace --all-targets --locked -- -D warnings
run_step "tests on SQLite" sqlite_pass "$@"
run_step "tests on PostgreSQL" postgres_pass "$@"
# The chart rendered with default and full values, linted and validated against the Kubernetes
# schemas, offline.
run_step "helm-check (scripts/helm-check.sh)" scripts/helm-check.sh
# The .deb packages of the debug binaries built above, installed with apt-get, checked and purged.
run_step "packages (scripts/deb-check.sh)" scripts/deb-check.sh "$CARGO_TARGET_DIR/debug"
# examples/ci's GitHub Actions and GitLab CI recipes through their linters, offline once installed.
run_step "CI recipes (scripts/ci-examples-check.sh)" scripts/ci-examples-check.sh
# Every fuzz target for 20 s: a short run that replays the seeds and what earlier runs on this
# machine kept; longer runs are `scripts/fuzz.sh SECONDS`.
run_step "fuzz (scripts/fuzz.sh 20)" scripts/fuzz.sh 20

echo
echo "==> all checks passed"
