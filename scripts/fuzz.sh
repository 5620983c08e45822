#!/usr/bin/env bash
# Runs every cargo-fuzz (libFuzzer) target in fuzz/ for SECONDS each (default 30):
#   platform_parse   Platform::parse normalises idempotently,
#   image_ref_parse  ImageRef::parse / Digest::parse round-trip through Display,
#   context_unpack   the agent's context unpacking keeps hostile archives inside their directory.
# Installs cargo-fuzz (and the nightly toolchain, through rustup) when missing; non-interactive.
# Seeds come from fuzz/corpus/TARGET/ (read only); what the fuzzer finds grows
# $ARCHFARM_CACHE_DIR/fuzz/corpus/TARGET/ and is reused by the next run on this machine, from any
# clone. The sanitizer build lives in $ARCHFARM_CACHE_DIR/fuzz/target (see scripts/lib/cache.sh), so
# only a machine's first run compiles the dependencies. Each target's full libFuzzer output is in
# fuzz/target/fuzz-logs/.
# Exits non-zero when any target crashes, printing where the crashing input was saved and how to
# replay it.
#
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-30}"
# shellcheck source=lib/cache.sh
. "$ROOT/scripts/lib/cache.sh"
FUZZ_CACHE="$ARCHFARM_CACHE_DIR/fuzz"

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'fuzz.sh: error: %s\n' "$*" >&2; exit 2; }

[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive whole number, got '$SECS'"

if ! cargo +nightly --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 ||
        die "cargo-fuzz needs a nightly toolchain (cargo +nightly); install it with rustup"
    say "rustup toolchain install nightly --profile minimal"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi

cd "$ROOT/fuzz"
mapfile -t targets < <(cargo +nightly fuzz list)
[ "${#targets[@]}" -gt 0 ] || die "cargo fuzz list found no targets in $ROOT/fuzz"

say "cargo +nightly fuzz build (${targets[*]})"
cargo +nightly fuzz build --target-dir "$FUZZ_CACHE/target"

mkdir -p target/fuzz-logs
failed=()
for t in "${targets[@]}"; do
    corpus="$FUZZ_CACHE/corpus/$t"
    log="target/fuzz-logs/$t.log"
    mkdir -p "$corpus" "corpus/$t"
    say "fuzzing $t for ${SECS}s"
    # A hang counts as a crash after 25 s; an input may not make the target allocate past 2 GiB.
    if cargo +nightly fuzz run --target-dir "$FUZZ_CACHE/target" "$t" "$corpus" "corpus/$t" -- \
        -max_total_time="$SECS" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 || true)"
        runs="$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log" | tail -n1)"
        note "no crash: ${runs:-?} executions; $corpus holds $(find "$corpus" -type f | wc -l) inputs"
        note "${done_line:-"(no DONE line; see $log)"}"
    else
        failed+=("$t")
        crash="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)"
        printf 'fuzz.sh: %s FAILED (full output in fuzz/%s):\n' "$t" "$log" >&2
        # From the panic or sanitizer report on; the whole tail when there is none.
        report="$(awk '/panicked at|==ERROR:|ERROR: libFuzzer/ { p = 1 } p && n < 30 { print; n++ }' "$log")"
        printf '%s\n' "${report:-$(tail -n 30 "$log")}" >&2
        if [ -n "$crash" ]; then
            printf 'fuzz.sh: %s: crashing input saved at %s\n' "$t" "$crash" >&2
            printf 'fuzz.sh: replay: (cd fuzz && cargo +nightly fuzz run --target-dir %s %s %s)\n' \
                "$FUZZ_CACHE/target" "$t" "$crash" >&2
        fi
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    printf 'fuzz.sh: crashed: %s\n' "${failed[*]}" >&2
    exit 1
fi
say "fuzzing found nothing (${#targets[@]} targets, ${SECS}s each)"
