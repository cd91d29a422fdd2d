#!/usr/bin/env bash
# Kafka pass-through benchmark (issue 3, "Performance"):
#
#   bench/kafka_passthrough.sh [N [SIZE]]      # defaults: N=1000000 SIZE=1024
#
# On one private single-node Apache Kafka broker (scripts/kafka/start.sh, in a
# temp dir, always stopped on exit) it creates bench-in and three outputs with
# 6 partitions, produces N messages of SIZE bytes with unique keys into
# bench-in, then runs, one after the other, each reading all of bench-in with
# its own consumer group:
#   (a) conveyor run --config <generated yaml>   (daemon; SIGTERM once its output holds N)
#   (b) bench/aiokafka_passthrough.py            (Python/aiokafka baseline; exits after N)
#   (c) conveyor bench kafka-naive               (naive rdkafka copy loop; exits after N)
# and prints wall msgs/s (process start -> output holds N), CPU-s of the stage
# process itself (user+sys from wait4's rusage), msgs per CPU-second, peak RSS,
# the ratios a/b and a/c, and checks each output ends with exactly N messages.
#
# Env: CONVEYOR (binary, default target/release/conveyor), KEEP=1 keeps the
# work dir (broker data, configs, stage logs), STAGES="a b c" (subset/order),
# BATCH_SIZE (Conveyor worker batch_size, default 1000), KAFKA_PROPERTIES (extra
# librdkafka properties for Conveyor, YAML flow-map body: "linger.ms: 20"), PYTHON (default python3).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
N=${1:-1000000}
SIZE=${2:-1024}
PARTS=6
STAGES=${STAGES:-a b c}
BATCH_SIZE=${BATCH_SIZE:-1000}
PY=${PYTHON:-python3}
conveyor=${CONVEYOR:-$repo/target/release/conveyor}
[[ $conveyor == /* ]] || conveyor=$repo/$conveyor
tools=$here/kafka_tools.py

say() { echo "== $*" >&2; }
die() { echo "kafka_passthrough: ERROR: $*" >&2; exit 1; }

[[ $N =~ ^[0-9]+$ && $N -gt 0 ]] || die "N must be a positive integer"
[[ $SIZE =~ ^[0-9]+$ && $SIZE -gt 0 ]] || die "SIZE must be a positive integer"
if [[ $STAGES == *a* || $STAGES == *c* ]]; then
    [[ -x $conveyor ]] || die "$conveyor not found (cargo build --release)"
fi
if [[ $STAGES == *c* ]]; then
    "$conveyor" bench kafka-naive --help >/dev/null 2>&1 ||
        die "$conveyor has no 'bench kafka-naive' subcommand (rebuild it)"
fi

# Python deps (quiet; only if missing).
if ! "$PY" -c 'import aiokafka, confluent_kafka' 2>/dev/null; then
    say "installing aiokafka confluent-kafka with pip"
    "$PY" -m pip install -q aiokafka confluent-kafka >&2 ||
        "$PY" -m pip install -q --break-system-packages aiokafka confluent-kafka >&2 ||
        die "pip install aiokafka confluent-kafka failed"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kafka-bench.XXXXXX")
broker_dir=$work/broker
cleanup() {
    local rc=$?
    if [[ -n ${stage_pid:-} ]] && kill -0 "$stage_pid" 2>/dev/null; then
        kill -TERM "$stage_pid" 2>/dev/null || true
        wait "$stage_pid" 2>/dev/null || true
    fi
    if [[ -f $broker_dir/kafka.pid ]]; then
        "$repo/scripts/kafka/stop.sh" "$broker_dir" >&2 || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then
        say "kept $work"
    else
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting a private Kafka broker in $broker_dir"
line=$("$repo/scripts/kafka/start.sh" 0 "$broker_dir" | tail -n 1)
bootstrap=$(sed -n 's/.*bootstrap=\([^ ]*\).*/\1/p' <<<"$line")
[[ -n $bootstrap ]] || die "could not start the broker (start.sh said: $line)"
say "broker at $bootstrap"

"$PY" "$tools" create "$bootstrap" "$PARTS" bench-in bench-out-conveyor bench-out-aiokafka bench-out-naive
say "producing $N x $SIZE B into bench-in"
"$PY" "$tools" produce "$bootstrap" bench-in "$N" "$SIZE"
in_count=$("$PY" "$tools" count "$bootstrap" bench-in)
[[ $in_count == "$N" ]] || die "bench-in holds $in_count messages, expected $N"
"$PY" "$tools" warmup "$bootstrap" bench-in   # group coordinator up before stage (a) starts its clock

cfg=$work/conveyor.yaml
cat > "$cfg" <<EOF
service: { name: bench, http: { listen: "127.0.0.1:0" }, shutdown_grace: 30s, log: { format: json, level: warn } }
transports:
  kafka: { type: kafka, bootstrap_servers: "$bootstrap", properties: { ${KAFKA_PROPERTIES:-} } }
entities:
  in:  { transport: kafka, partitions: $PARTS, name: bench-in }
  out: { transport: kafka, partitions: $PARTS, name: bench-out-conveyor }
workers:
  copy: { input: in, consumer_group: bench-conveyor, outputs: { default: out }, batch_size: $BATCH_SIZE }
EOF

results=$work/results.jsonl
: > "$results"
stage() {  # stage ID NAME OUT GROUP [--sigterm] -- CMD...
    local id=$1 name=$2 out=$3 group=$4; shift 4
    local extra=()
    [[ $1 == --sigterm ]] && { extra=(--sigterm); shift; }
    [[ $1 == -- ]] && shift
    say "stage ($id) $name -> $out"
    sync; sleep 2   # let the broker settle (log flushes) between stages
    "$PY" "$tools" stage --id "$id" --name "($id) $name" --bootstrap "$bootstrap" --out "$out" \
        --group "$group" --count "$N" "${extra[@]}" --log "$work/stage-$id.log" --json "$results" -- "$@" &
    stage_pid=$!
    wait "$stage_pid" || true
    stage_pid=
    if [[ -s $work/stage-$id.log ]]; then
        echo "   last lines of $name's output:" >&2
        tail -n 5 "$work/stage-$id.log" | sed 's/^/   | /' >&2
    fi
}

for s in $STAGES; do
    case $s in
        a) stage a conveyor bench-out-conveyor bench-conveyor --sigterm -- "$conveyor" run --config "$cfg" ;;
        b) stage b aiokafka bench-out-aiokafka bench-aiokafka -- "$PY" "$here/aiokafka_passthrough.py" \
               --bootstrap "$bootstrap" --from bench-in --to bench-out-aiokafka \
               --group bench-aiokafka --count "$N" ;;
        c) stage c rdkafka-naive bench-out-naive bench-naive -- "$conveyor" bench kafka-naive \
               --bootstrap "$bootstrap" --from bench-in --to bench-out-naive \
               --group bench-naive --count "$N" ;;
        *) die "unknown stage '$s' (a, b or c)" ;;
    esac
done

rc=0
"$PY" "$tools" report "$results" "$N" "$SIZE" || rc=$?
echo
echo "output high watermarks (expected $N each):"
for t in bench-out-conveyor bench-out-aiokafka bench-out-naive; do
    printf '  %-20s %s\n' "$t" "$("$PY" "$tools" count "$bootstrap" "$t")"
done
[[ ${KEEP:-0} == 1 ]] && echo "work dir (configs, stage logs, broker log): $work"
exit "$rc"
