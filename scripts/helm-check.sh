#!/usr/bin/env bash
# Checks the Helm chart offline: helm lint --strict, render with the minimal and the full values,
# validate every manifest against the Kubernetes 1.30 schemas (strict) and the custom resources
# against the small schemas in helm/check/schemas, compare the chart's ARCHFARM_* variables, probe
# path and metric name with the code, and make sure bad values are refused. No cluster is needed.
# Installs helm/check/requirements.txt into $ARCHFARM_CACHE_DIR/helm-venv (PyPI only; about 400 MB)
# on a machine's first run; later runs, from any clone, reuse it while the requirements are the same.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# shellcheck source=lib/cache.sh
. "$ROOT/scripts/lib/cache.sh"
VENV="$ARCHFARM_CACHE_DIR/helm-venv"
REQS="$ROOT/helm/check/requirements.txt"
OUT="$ROOT/target/helm-check"

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'helm-check.sh: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is needed (apt-get install python3 python3-venv)"

# Reinstall only when the pinned list changed, so a warm run makes no network call at all.
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    step "python venv $VENV with helm/check/requirements.txt"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "cannot make a venv (on Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$REQS"
    echo "$want" >"$stamp"
fi

step "helm/check/check.py"
rm -rf "$OUT"
"$VENV/bin/python" "$ROOT/helm/check/check.py" "$ROOT" "$OUT"
