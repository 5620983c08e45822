#!/usr/bin/env bash
# Prepares the machine, builds archfarm and runs every test: unit tests and the end-to-end tests under
# tests/ (real registry, coordinator, agents, buildah and QEMU), then a short run of each fuzz target.
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

step "cargo build --workspace --bins"
# The end-to-end tests run these binaries from target/debug; cargo test alone would not build them.
cargo build --workspace --bins

step "cargo test --workspace"
# Builds under QEMU are slow on small machines; a failing test prints its processes' log tails.
cargo test --workspace "$@"

step "scripts/fuzz.sh 20"
# Every fuzz target for 20 s (about 1 min in all, plus the first sanitizer build): a short run that
# replays the seeds and whatever earlier runs kept; longer runs are `scripts/fuzz.sh SECONDS`.
scripts/fuzz.sh 20

step "all tests passed"
