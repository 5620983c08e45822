# Sourced by the scripts: where build outputs and downloaded tools live between runs.
#
# A fresh clone would otherwise compile the workspace, its dependencies and the fuzz targets from
# nothing, and reinstall the Helm check's Python packages. Keeping them outside the clone lets a
# machine that has built archfarm before start warm; one that never has fills the cache as it goes.
#
#   ARCHFARM_CACHE_DIR  the cache root: /var/cache/archfarm for root, else
#                       ${XDG_CACHE_HOME:-~/.cache}/archfarm. Deleting it makes the next run cold.
#   CARGO_TARGET_DIR    cargo's build outputs: $ARCHFARM_CACHE_DIR/target unless already set.
#
# Nothing in the cache is trusted blindly: cargo checks its own fingerprints, and each script that
# keeps something there checks what it finds (the Helm venv against its requirements' hash).

if [ -z "${ARCHFARM_CACHE_DIR:-}" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        ARCHFARM_CACHE_DIR=/var/cache/archfarm
    else
        ARCHFARM_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/archfarm"
    fi
fi
export ARCHFARM_CACHE_DIR
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ARCHFARM_CACHE_DIR/target}"
mkdir -p "$ARCHFARM_CACHE_DIR" "$CARGO_TARGET_DIR"

# Empties cargo's build outputs when they have grown past ARCHFARM_CACHE_MAX_GB (default 20): cargo
# never deletes old outputs itself, and a full disk would fail every build and test. The next build
# is then a cold one.
cache_trim() {
    local max_gb="${ARCHFARM_CACHE_MAX_GB:-20}" used_kb
    used_kb="$(du -sk "$CARGO_TARGET_DIR" 2>/dev/null | cut -f1)"
    if [ "${used_kb:-0}" -gt $((max_gb * 1024 * 1024)) ]; then
        echo "build cache: $CARGO_TARGET_DIR holds $((used_kb / 1024 / 1024)) GB, over ARCHFARM_CACHE_MAX_GB=$max_gb: emptying it (this build is a cold one)"
        rm -rf "$CARGO_TARGET_DIR"
        mkdir -p "$CARGO_TARGET_DIR"
    fi
}
