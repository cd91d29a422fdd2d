#!/usr/bin/env bash
# Verify systemd/conveyor.service with systemd-analyze.
#
# Usage: scripts/verify-systemd.sh PATH/TO/conveyor   (e.g. target/debug/conveyor)
#
# `systemd-analyze verify` fails when ExecStart's binary does not exist, and
# /usr/local/bin/conveyor is not installed in CI. So the unit is copied to a
# temporary directory with only ExecStart's program path replaced by $1, and
# that copy is verified. Any output from verify (e.g. "Unknown key", which by
# itself still exits 0) counts as a failure. An offline hardening score check
# (`systemd-analyze security`) follows; CONVEYOR_SECURITY_THRESHOLD is on
# systemd's 0-100 scale (18 = the "1.8" it prints).
#
# Needs: systemd-analyze (Debian package `systemd`). PID 1 need not be systemd.
set -euo pipefail

usage() { echo "usage: $0 PATH/TO/conveyor-binary" >&2; exit 2; }
[[ $# -eq 1 ]] || usage

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
unit="$here/../systemd/conveyor.service"
installed_bin=/usr/local/bin/conveyor
threshold=${CONVEYOR_SECURITY_THRESHOLD:-25}

command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }
[[ -f $unit ]] || { echo "unit not found: $unit" >&2; exit 1; }

bin=$(realpath -e -- "$1" 2>/dev/null) || { echo "binary not found: $1" >&2; exit 1; }
[[ -x $bin ]] || { echo "not executable: $bin" >&2; exit 1; }
[[ $bin != *[[:space:]]* ]] || { echo "binary path must not contain whitespace: $bin" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
copy="$tmp/conveyor.service"   # the file name must stay conveyor.service

# Rewrite ExecStart's program path only; keep its arguments.
replaced=0
while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line == "ExecStart=$installed_bin "* || $line == "ExecStart=$installed_bin" ]]; then
        line="ExecStart=$bin${line#"ExecStart=$installed_bin"}"
        replaced=$((replaced + 1))
    fi
    printf '%s\n' "$line"
done <"$unit" >"$copy"
[[ $replaced -eq 1 ]] || { echo "expected exactly one 'ExecStart=$installed_bin ...' line in $unit, found $replaced" >&2; exit 1; }

echo "== systemd-analyze verify ($(grep '^ExecStart=' "$copy"))"
rc=0
out=$(systemd-analyze verify --man=no "$copy" 2>&1) || rc=$?
if [[ $rc -ne 0 || -n $out ]]; then
    # Show messages against the real unit's name rather than the temp copy.
    printf '%s\n' "${out//$copy/systemd/conveyor.service}" >&2
    echo "FAIL: systemd-analyze verify (exit $rc${out:+, with messages})" >&2
    exit 1
fi
echo "ok"

echo "== systemd-analyze security --offline (threshold $threshold)"
rc=0
out=$(systemd-analyze security --offline=true --threshold="$threshold" "$copy" 2>&1) || rc=$?
printf '%s\n' "$out" | grep -F 'Overall exposure level' || true
if [[ $rc -ne 0 ]]; then
    printf '%s\n' "$out" | grep -F '✗' >&2 || true
    echo "FAIL: exposure above threshold $threshold (exit $rc)" >&2
    exit 1
fi
echo "ok"
