#!/usr/bin/env bash
# The proof suite at soak sizes (issue 14): the scenarios of tests/chaos.rs —
# crashes, broker and store outages, failover, service faults, hostile input,
# mutated configs — with every id counted end to end by an independent client
# (kcat, the Python azure-eventhub SDK, result files), printed as a table.
#
#   bench/chaos.sh [N [KILLS [OUTAGE_SECS [FILTER]]]]
#       N            messages per scenario              (default 100000)
#       KILLS        SIGKILLs in each crash scenario    (default 20)
#       OUTAGE_SECS  length of each outage              (default 20)
#       FILTER       test-name filter, e.g. c1_ or c2_kafka (default: all)
#
# Env: MUTATIONS (mutated copies per shipped config, default 1000),
# FRESH_IDS=1 (a new instance id on every restart: recovery as it was before
# static membership), KEEP_REPORT=FILE (also keep the raw rows).
# Needs what the README's test command installs (scripts/setup.sh: kcat,
# Java + Maven for Kafka, Azurite, the Python SDK venv); starts and stops
# its own Kafka broker. Release build of the binary and the test harness.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"
N=${1:-100000}
KILLS=${2:-20}
OUTAGE=${3:-20}
FILTER=${4:-}
[[ $N =~ ^[0-9]+$ && $KILLS =~ ^[0-9]+$ && $OUTAGE =~ ^[0-9]+$ ]] || { echo "usage: $0 [N [KILLS [OUTAGE_SECS [FILTER]]]]" >&2; exit 2; }
command -v cargo >/dev/null || source "$HOME/.cargo/env"

scripts/setup.sh >&2
kafka_dir=$(mktemp -d)
report=$(mktemp)
log=$(mktemp)
cleanup() { scripts/kafka/stop.sh "$kafka_dir" >/dev/null 2>&1 || true; rm -rf "$kafka_dir" "$log"; [[ -n ${KEEP_REPORT:-} ]] && cp "$report" "$KEEP_REPORT"; rm -f "$report"; }
trap cleanup EXIT
kafka_out=$(scripts/kafka/start.sh 0 "$kafka_dir")
export CONVEYOR_TEST_KAFKA=$(sed -n 's/.*bootstrap=\([^ ]*\).*/\1/p' <<<"$kafka_out")
export CHAOS_N=$N CHAOS_KILLS=$KILLS CHAOS_OUTAGE_SECS=$OUTAGE CHAOS_REPORT=$report
export CHAOS_MUTATIONS=${MUTATIONS:-1000} CHAOS_FRESH_IDS=${FRESH_IDS:-0}

echo "== chaos: N=$N kills=$KILLS outage=${OUTAGE}s fresh_ids=${CHAOS_FRESH_IDS} (release build)" >&2
set +e
cargo test --release --locked --test chaos -- --test-threads 1 --nocapture $FILTER >"$log" 2>&1
rc=$?
set -e
grep -E '^(test |C[0-9]: |C[0-9] )' "$log" >&2 || true
echo
{
    printf 'scenario\tmessages\tfaults\tlost\tduplicates\trecovery\tRSS\n'
    cat "$report"
} | column -t -s $'\t'
if [[ $rc -ne 0 ]]; then
    echo >&2
    echo "chaos: a scenario FAILED (exit $rc); its output:" >&2
    grep -E -A15 'panicked|FAILED' "$log" | head -80 >&2
    exit "$rc"
fi
lost=$(awk -F'\t' '$4 != 0 { n++ } END { print n+0 }' "$report")
[[ $lost -eq 0 ]] || { echo "chaos: $lost scenario(s) lost messages" >&2; exit 1; }
echo "chaos: every scenario lost 0"
