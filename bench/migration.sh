#!/usr/bin/env bash
# Migration benchmark:
#
#   bench/migration.sh [N [SIZE]]      # defaults: N=1000000 SIZE=1024
#
# On a private Apache Kafka broker (scripts/kafka/start.sh) and the local
# Event Hubs test broker (`conveyor dev eventhubs`, 4 partitions), both
# started here and stopped on exit, it produces N messages of SIZE bytes into
# a 4-partition topic, then runs, one after the other:
#   (a) the migration mirror: `migrate: { to: hubs, phase: mirror }` on the
#       topic, no workers — the mirror copies every message to a hub;
#   (b) the baseline: Conveyor's pass-through worker copying the same topic
#       to another hub (same batch size);
#   (v) `conveyor migrate verify` of the mirrored entity (reads N on each side).
# For (a) and (b): wall msgs/s (daemon start -> N acknowledged copies, from
# /metrics), CPU-s of the daemon (/proc), msgs per CPU-second, peak RSS, and
# the ratio a/b. For (v): messages read per second (2N) and per CPU-second,
# and its verdict (must be EQUAL).
#
# Env: CONVEYOR (default target/release/conveyor), PYTHON (default python3;
# needs confluent-kafka, installed with pip if missing), STAGES (default
# "a b v"), KEEP=1 keeps the work dir.
#
# Note on (b): the messages have unique keys, and the Event Hubs producer
# sends each key's messages as their own batch (the service places keys;
# issue 17): the baseline pays one round trip per message. The mirror keeps
# partition indices (equal counts) and sends whole batches per partition.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
N=${1:-1000000}
SIZE=${2:-1024}
PARTS=4
PY=${PYTHON:-python3}
conveyor=${CONVEYOR:-$repo/target/release/conveyor}
[[ $conveyor == /* ]] || conveyor=$repo/$conveyor
tools=$here/kafka_tools.py
say() { echo "== $*" >&2; }
die() { echo "migration bench: ERROR: $*" >&2; exit 1; }
[[ -x $conveyor ]] || die "$conveyor not found (cargo build --release)"
"$PY" -c 'import confluent_kafka' 2>/dev/null || "$PY" -m pip install -q confluent-kafka >&2 ||
    "$PY" -m pip install -q --break-system-packages confluent-kafka >&2 || die "pip install confluent-kafka failed"

work=$(mktemp -d "${TMPDIR:-/tmp}/migration-bench.XXXXXX")
pids=()
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    [[ -f $work/broker/kafka.pid ]] && "$repo/scripts/kafka/stop.sh" "$work/broker" >&2 || true
    if [[ ${KEEP:-0} == 1 ]]; then say "kept $work"; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT

line=$("$repo/scripts/kafka/start.sh" 0 "$work/broker" | tail -n 1)
bootstrap=$(sed -n 's/.*bootstrap=\([^ ]*\).*/\1/p' <<<"$line")
[[ -n $bootstrap ]] || die "could not start Kafka ($line)"
eh_port=$("$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$conveyor" dev eventhubs --listen "127.0.0.1:$eh_port" --partitions "$PARTS" > "$work/eh.log" 2>&1 &
pids+=($!)
conn="Endpoint=sb://127.0.0.1:$eh_port;SharedAccessKeyName=k;SharedAccessKey=x;UseDevelopmentEmulator=true"
"$PY" "$tools" create "$bootstrap" "$PARTS" bench-in
say "producing $N x $SIZE B into bench-in"
"$PY" "$tools" produce "$bootstrap" bench-in "$N" "$SIZE"
"$PY" "$tools" warmup "$bootstrap" bench-in

transports="transports:
  kafka: { type: kafka, bootstrap_servers: \"$bootstrap\" }
  hubs: { type: eventhubs, connection_string: \"$conn\" }"
cat > "$work/mirror.yaml" <<EOF
service: { name: bench, http: { listen: "127.0.0.1:0" }, shutdown_grace: 30s, log: { format: json, level: info } }
$transports
entities:
  in: { transport: kafka, partitions: $PARTS, name: bench-in, migrate: { to: hubs, name: bench-mirror, phase: mirror } }
EOF
cat > "$work/copy.yaml" <<EOF
service: { name: bench, http: { listen: "127.0.0.1:0" }, shutdown_grace: 30s, log: { format: json, level: info } }
$transports
entities:
  in: { transport: kafka, partitions: $PARTS, name: bench-in }
  out: { transport: hubs, partitions: $PARTS, name: bench-copy }
workers:
  copy: { input: in, consumer_group: bench-copy, outputs: { default: out }, batch_size: 500 }
EOF

hz=$(getconf CLK_TCK)
# stage ID CONFIG WORKER: runs the daemon until WORKER produced N; writes
# "wall cpu rss_mb" to $work/ID.result
stage() {
    local id=$1 cfg=$2 worker=$3
    sync; sleep 2
    local t0; t0=$(date +%s.%N)
    "$conveyor" run --config "$cfg" 2> "$work/$id.log" &
    local pid=$!
    pids+=("$pid")
    local addr=""
    for _ in $(seq 1 200); do
        addr=$(grep -o '"listen":"[^"]*"' "$work/$id.log" | head -1 | cut -d'"' -f4 || true)
        [[ -n $addr ]] && break
        sleep 0.05
    done
    [[ -n $addr ]] || die "($id) did not start: $(tail -3 "$work/$id.log")"
    local done=0 n=0
    for _ in $(seq 1 36000); do
        n=$(curl -sf "http://$addr/metrics" | awk -v w="worker=\"$worker\"" '$1 ~ /^conveyor_messages_produced_total\{/ && index($1, w) { s += $2 } END { printf "%d", s }')
        if [[ ${n:-0} -ge $N ]]; then done=1; break; fi
        sleep 0.05
    done
    local t1; t1=$(date +%s.%N)
    read -r ut st < <(awk '{ print $14, $15 }' "/proc/$pid/stat")
    local rss; rss=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")
    kill -TERM "$pid"; wait "$pid" || true
    [[ $done == 1 ]] || die "($id) copied only $n of $N"
    awk -v a="$t0" -v b="$t1" -v u="$ut" -v s="$st" -v hz="$hz" -v r="$rss" 'BEGIN { printf "%.2f %.2f %s\n", b - a, (u + s) / hz, r }' > "$work/$id.result"
}

STAGES=${STAGES:-a b v}
printf -v header '\n%-26s %8s %10s %8s %14s %9s\n' stage "wall s" "msgs/s" "CPU-s" "msgs/CPU-s" "peak RSS"
rows=""
row() { # name wall cpu rss_mb [read multiplier]
    rows+=$(awk -v n="$N" -v name="$1" -v w="$2" -v c="$3" -v r="$4" -v k="${5:-1}" \
        'BEGIN { printf "%-26s %8.2f %10.0f %8.2f %14.0f %6d MB\n", name, w, k * n / w, c, k * n / c, r }')$'\n'
}
verdict=""
for s in $STAGES; do
    case $s in
        a) say "(a) the migration mirror"; stage a "$work/mirror.yaml" "mirror:in"
           read -r aw ac ar < "$work/a.result"; row "(a) mirror" "$aw" "$ac" "$ar" ;;
        b) say "(b) the pass-through worker"; stage b "$work/copy.yaml" "copy"
           read -r bw bc br < "$work/b.result"; row "(b) pass-through worker" "$bw" "$bc" "$br" ;;
        v) [[ $STAGES == *a* ]] || die "(v) verifies what (a) mirrored"
           say "(v) migrate verify"
           vout=$(/usr/bin/time -f "%e %U %S %M" -o "$work/verify.time" "$conveyor" migrate verify \
               --config "$work/mirror.yaml" --entity in --format json || true)
           read -r vw vu vs vr < "$work/verify.time"
           verdict=$(grep -o '"equal": [a-z]*' <<<"$vout" | awk '{ print $2 }')
           row "(v) verify (reads 2N)" "$vw" "$(awk -v u="$vu" -v s="$vs" 'BEGIN { print u + s }')" "$((vr / 1024))" 2 ;;
        *) die "unknown stage '$s' (a, b or v)" ;;
    esac
done
printf '%s%s' "$header" "$rows"
if [[ -n ${ac:-} && -n ${bc:-} ]]; then
    awk -v a="$ac" -v b="$bc" 'BEGIN { printf "\nratio a/b msgs per CPU-second: %.2f\n", b / a }'
fi
if [[ $STAGES == *v* ]]; then
    echo "verify: equal = $verdict"
    [[ $verdict == true ]] || die "verify did not find both sides equal"
fi
