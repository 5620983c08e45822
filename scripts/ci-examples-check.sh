#!/usr/bin/env bash
# Checks the CI recipes in examples/ci/ with a linter for each format, installed from a package
# registry, and fails on any finding:
#   github-actions.yml  check-jsonschema's vendored GitHub workflow schema, and actionlint, which
#                       also runs shellcheck over every `run:` step
#   gitlab-ci.yml       check-jsonschema's vendored GitLab CI schema, and shellcheck over every
#                       job's script lines (examples/ci/check/shell_blocks.py)
# The tools come from PyPI (examples/ci/check/requirements.txt, binaries in their wheels) into
# $ARCHFARM_CACHE_DIR/ci-check-venv, installed on a machine's first run and again only when the
# pins change, so a warm run makes no network call.
#
#   scripts/ci-examples-check.sh [FILE...]   other files than examples/ci's two (by their names:
#                                            *gitlab* is GitLab CI, anything else a workflow)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/cache.sh
. "$ROOT/scripts/lib/cache.sh"
CHECK="$ROOT/examples/ci/check"
VENV="$ARCHFARM_CACHE_DIR/ci-check-venv"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'ci-examples-check.sh: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is needed (apt-get install python3 python3-venv)"

stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$CHECK/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/check-jsonschema" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    step "installing the linters into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "cannot make a venv (on Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$CHECK/requirements.txt"
    echo "$want" >"$stamp"
fi

if [ $# -gt 0 ]; then
    FILES=("$@")
else
    FILES=("$ROOT/examples/ci/github-actions.yml" "$ROOT/examples/ci/gitlab-ci.yml")
fi
GITHUB=()
GITLAB=()
for f in "${FILES[@]}"; do
    [ -f "$f" ] || die "$f: no such file"
    case "$(basename "$f")" in *gitlab*) GITLAB+=("$f") ;; *) GITHUB+=("$f") ;; esac
done

failed=0
check() { # NAME COMMAND...: runs one check, notes a failure and goes on to the next
    local name="$1"
    shift
    step "$name"
    if "$@"; then echo "ok: no findings"; else echo "FAILED: $name" >&2; failed=1; fi
}
if [ "${#GITHUB[@]}" -gt 0 ]; then
    check "check-jsonschema --builtin-schema vendor.github-workflows" \
        "$VENV/bin/check-jsonschema" --builtin-schema vendor.github-workflows "${GITHUB[@]}"
    # With the venv first on PATH, actionlint finds its shellcheck and checks the run: steps too.
    check "actionlint $("$VENV/bin/actionlint" -version | head -n1) (with shellcheck)" \
        env PATH="$VENV/bin:$PATH" actionlint -no-color "${GITHUB[@]}"
fi
if [ "${#GITLAB[@]}" -gt 0 ]; then
    check "check-jsonschema --builtin-schema vendor.gitlab-ci" \
        "$VENV/bin/check-jsonschema" --builtin-schema vendor.gitlab-ci "${GITLAB[@]}"
    check "shellcheck of the script: lines" \
        "$VENV/bin/python" "$CHECK/shell_blocks.py" "$VENV/bin/shellcheck" "${GITLAB[@]}"
fi
[ "$failed" -eq 0 ] || die "a CI recipe has lint errors (above)"
step "CI recipes: no findings"
