#!/usr/bin/env bash
# Runs the QEMU DaemonSet's registration script, as the chart renders it, in a private user and
# mount namespace (binfmt_misc has one instance per user namespace since Linux 6.7), so the
# machine's own handlers are untouched. Then hides the interpreters and runs an arm64 program:
# it only runs if the handler was registered with the F flag, as in a container on a node.
# Usage: binfmt-test.sh OUT_DIR (with binfmt-register.sh and exit42-arm64 from check.py).
set -euo pipefail

OUT="$1"
skip() { echo "  skip binfmt registration script: $*"; exit 0; }

[ -f /usr/lib/binfmt.d/qemu-aarch64.conf ] ||
    skip "qemu-user-static is not installed (scripts/setup.sh installs it)"
[ "$(uname -m)" != aarch64 ] || skip "the test program is arm64, which this machine runs natively"
unshare --user --map-root-user --mount true 2>/dev/null || skip "no user namespaces here"

set +e
unshare --user --map-root-user --mount bash -euo pipefail -c '
    # A fresh instance; an older kernel refuses it (exit 3: skipped, not failed).
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || exit 3
    sh "$1/binfmt-register.sh" | sed "s/^/         /"
    sh "$1/binfmt-register.sh" >/dev/null   # again: a restarted pod must not fail
    mount -t tmpfs tmpfs /usr/libexec        # the interpreters are gone, as in another container
    set +e
    "$1/exit42-arm64"
    echo "exit $?"
' _ "$OUT" >"$OUT/binfmt-test.log" 2>&1
rc=$?
set -e
[ "$rc" -ne 3 ] || skip "this kernel ($(uname -r)) has no binfmt_misc per user namespace (Linux 6.7+)"
if [ "$rc" -eq 0 ] && grep -qx "exit 42" "$OUT/binfmt-test.log"; then
    grep -v '^exit ' "$OUT/binfmt-test.log"
    echo "  ok   registration script: handlers registered (twice), an arm64 program ran under QEMU with the interpreter hidden"
else
    cat "$OUT/binfmt-test.log"
    echo "  FAIL registration script (rc $rc): see above"
    exit 1
fi
