#!/usr/bin/env bash
# Verifies systemd/conveyor.service: `systemd-analyze verify` (any message,
# e.g. "Unknown key", which by itself still exits 0, counts as a failure) and
# an offline hardening score (`systemd-analyze security`; threshold on
# systemd's 0-100 scale, CONVEYOR_SECURITY_THRESHOLD, default 25 = "2.5").
# Needs systemd-analyze (Debian package `systemd`); PID 1 need not be systemd.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
unit="$here/../systemd/conveyor.service"
threshold=${CONVEYOR_SECURITY_THRESHOLD:-25}
command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }

echo "== systemd-analyze verify systemd/conveyor.service"
rc=0
out=$(systemd-analyze verify --man=no "$unit" 2>&1) || rc=$?
if [[ $rc -ne 0 || -n $out ]]; then
    printf '%s\n' "$out" >&2
    echo "FAIL: systemd-analyze verify (exit $rc${out:+, with messages})" >&2
    exit 1
fi
echo "ok"

echo "== systemd-analyze security --offline (threshold $threshold)"
rc=0
out=$(systemd-analyze security --offline=true --threshold="$threshold" "$unit" 2>&1) || rc=$?
printf '%s\n' "$out" | grep -F 'Overall exposure level' || true
if [[ $rc -ne 0 ]]; then
    printf '%s\n' "$out" | grep -F '✗' >&2 || true
    echo "FAIL: exposure above threshold $threshold (exit $rc)" >&2
    exit 1
fi
echo "ok"
