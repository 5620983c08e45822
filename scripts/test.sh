#!/usr/bin/env bash
# Prepares the machine, builds archfarm and runs every test: unit tests and the end-to-end tests under
# tests/ (real registry, coordinator, agents, buildah and QEMU) on SQLite, then every test that
# touches the database again on PostgreSQL, the Helm chart's offline check, and a short run of each
# fuzz target.
# The end-to-end tests need root (buildah's chroot isolation and binfmt_misc); CI runs this as root.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -- four_platforms`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: warning: not root; the end-to-end tests need root and will fail" >&2
fi

step "scripts/setup.sh"
scripts/setup.sh

step "scripts/postgres.sh"
# A PostgreSQL server on 127.0.0.1:5432 (started or installed when missing) for the replica tests
# and the PostgreSQL pass below.
PG_URL="$(scripts/postgres.sh | tail -n1)"

step "scripts/helm-check.sh"
# The chart rendered with default and full values, linted and validated against the Kubernetes
# schemas, offline.
scripts/helm-check.sh

step "cargo build --workspace --bins"
# The end-to-end tests run these binaries from target/debug; cargo test alone would not build them.
cargo build --workspace --bins

step "cargo test --workspace"
# Builds under QEMU are slow on small machines; a failing test prints its processes' log tails.
# On SQLite, the default (tests/replicas.rs is PostgreSQL-only and runs here too), whatever the
# caller's environment says.
env -u ARCHFARM_TEST_POSTGRES cargo test --workspace "$@"

step "cargo test on PostgreSQL (ARCHFARM_TEST_POSTGRES)"
# The same tests again, each coordinator on a fresh PostgreSQL database, for the crates whose
# tests reach a database: the coordinator's and the end-to-end ones. The agent's, the CLI's and the
# protocol's tests never touch one, so running them twice would prove nothing new. The replica
# tests ran above already.
if [ "$#" -gt 0 ]; then
    ARCHFARM_TEST_POSTGRES="$PG_URL" cargo test -p archfarm-coordinator -p archfarm-e2e "$@"
else
    ARCHFARM_TEST_POSTGRES="$PG_URL" cargo test -p archfarm-coordinator -p archfarm-e2e -- \
        --skip two_replicas_share_one_database --skip a_replica_killed_mid_batch
fi

step "scripts/fuzz.sh 20"
# Every fuzz target for 20 s (about 1 min in all, plus the first sanitizer build): a short run that
# replays the seeds and whatever earlier runs kept; longer runs are `scripts/fuzz.sh SECONDS`.
scripts/fuzz.sh 20

step "all tests passed"
