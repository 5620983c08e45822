# Sourced by scripts/test.sh: runs named steps, times each, and prints a table of them at exit.
#
#   run_step NAME COMMAND [ARG...]  runs COMMAND in a subshell with `set -e` and records its time
#                                   and result; a failing step stops the run (the table still shows).
#   A step that runs tests writes how many ran to "$STEP_TESTS_FILE"; the table shows it.
#   step_table                      prints the table (also called on exit).

STEP_NAMES=()
STEP_SECS=()
STEP_RESULTS=()
STEP_TESTS=()
STEP_RUN_START="$(date +%s)"
STEP_TESTS_FILE="$(mktemp)"

# Seconds as m:ss.
step_clock() { printf '%d:%02d' $(($1 / 60)) $(($1 % 60)); }

run_step() {
    local name="$1" start rc
    shift
    printf '\n==> %s\n' "$name"
    : >"$STEP_TESTS_FILE"
    start="$(date +%s)"
    # The subshell keeps `set -e` in force inside shell functions, which an `if` would switch off.
    set +e
    (set -e; "$@")
    rc=$?
    set -e
    STEP_NAMES+=("$name")
    STEP_SECS+=($(($(date +%s) - start)))
    STEP_TESTS+=("$(cat "$STEP_TESTS_FILE")")
    if [ "$rc" -eq 0 ]; then
        STEP_RESULTS+=(ok)
    else
        STEP_RESULTS+=("FAILED (exit $rc)")
        printf '\n==> %s FAILED (exit %d)\n' "$name" "$rc" >&2
        exit "$rc"
    fi
}

step_table() {
    local i total=$(($(date +%s) - STEP_RUN_START))
    printf '\n==> time per step\n'
    printf '%-44s %8s  %-16s %s\n' step time result tests
    for i in "${!STEP_NAMES[@]}"; do
        printf '%-44s %8s  %-16s %s\n' "${STEP_NAMES[$i]}" "$(step_clock "${STEP_SECS[$i]}")" \
            "${STEP_RESULTS[$i]}" "${STEP_TESTS[$i]}"
    done
    printf '%-44s %8s\n' total "$(step_clock "$total")"
    rm -f "$STEP_TESTS_FILE"
}
