#!/usr/bin/env bash
# Starts a single-node Apache Kafka (KRaft, combined broker+controller) for tests.
#
#   scripts/kafka/start.sh [PORT [DIR]]
#
# PORT: client port on 127.0.0.1 ($1, else $KAFKA_PORT, else the port DIR last
#       used, else 9092; 0 = pick a free port).
# DIR:  data dir ($2, else a new mktemp dir). Holds server.properties,
#       server.log, kafka.pid and data/. An already formatted DIR is reused
#       as is (restart: topics and messages survive; same controller port).
# Env:  KAFKA_HOME (jar cache, see fetch.sh), KAFKA_HEAP_OPTS
#       (default "-Xms128m -Xmx512m"), KAFKA_START_TIMEOUT (s, default 60),
#       KAFKA_LOG_LEVEL (default INFO), KAFKA_CONTROLLER_PORT,
#       KAFKA_CLUSTER_ID, KAFKA_OVERRIDES (extra "key=value" lines for
#       server.properties; they win over the defaults below).
#
# Progress goes to stderr; the last (only) stdout line is
#   pid=<pid> bootstrap=127.0.0.1:<port> dir=<dir>
# so `out=$(scripts/kafka/start.sh 0)` works. Stop with scripts/kafka/stop.sh.
# Exits non-zero, with the log's tail on stderr, if the broker is not usable
# within KAFKA_START_TIMEOUT seconds.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export KAFKA_HOME=${KAFKA_HOME:-$repo/.cache/kafka}
lib=$KAFKA_HOME/lib
timeout=${KAFKA_START_TIMEOUT:-60}
t0=$(date +%s.%N)

say() { echo "kafka start: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
elapsed() { awk -v s="$t0" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))   # below Linux's ephemeral range (32768+)
        [[ $p != "${port:-}" ]] && ! port_open "$p" && { echo "$p"; return 0; }
    done
    return 1
}
prop() { sed -n "s/^$1=//p" "$2" 2>/dev/null | tail -1; }

command -v java >/dev/null || die "java not found (Kafka 4.x needs Java >= 17)"
"$here/fetch.sh" >&2

dir=${2:-}
if [[ -z $dir ]]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/kafka-test.XXXXXX")
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
props=$dir/server.properties
log=$dir/server.log
pidfile=$dir/kafka.pid

# Live (not a zombie) and really our broker (pids get reused).
running() {
    local p=$1
    [[ -r /proc/$p/cmdline && $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]] &&
        tr '\0' ' ' < "/proc/$p/cmdline" | grep -qF "kafka.Kafka $props"
}
if [[ -f $pidfile ]] && running "$(cat "$pidfile")"; then
    die "a broker (pid $(cat "$pidfile")) is already running on $dir"
fi

formatted=0
[[ -f $dir/data/meta.properties ]] && formatted=1

port=${1:-${KAFKA_PORT:-}}
if [[ -z $port && -f $props ]]; then
    port=$(prop listeners "$props" | sed -n 's/.*PLAINTEXT:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p')
fi
port=${port:-9092}
[[ $port =~ ^[0-9]+$ ]] || die "bad port '$port'"
if [[ $port == 0 ]]; then port=$(free_port) || die "no free port"; fi
port_open "$port" && die "port 127.0.0.1:$port is already in use"

# The controller port is recorded in the formatted (standalone, dynamic) quorum,
# so a restart reuses the old one.
cport=${KAFKA_CONTROLLER_PORT:-}
if [[ -z $cport && $formatted == 1 && -f $props ]]; then
    cport=$(prop listeners "$props" | sed -n 's/.*CONTROLLER:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p')
fi
if [[ -z $cport ]]; then cport=$(free_port) || die "no free port"; fi
port_open "$cport" && die "controller port 127.0.0.1:$cport is already in use"

cat > "$props" <<EOF
# Written by scripts/kafka/start.sh: single-node KRaft broker+controller for tests.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data

auto.create.topics.enable=true
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# The log cleaner (compacted __consumer_offsets) preallocates this on the heap;
# the 128 MiB default costs ~130 MB of RSS.
log.cleaner.dedupe.buffer.size=16777216
${KAFKA_OVERRIDES:-}
EOF

cp=("-cp" "$lib/*")
jvm=(${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}
     -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
     -Djava.awt.headless=true
     "-Dlog4j2.configurationFile=$here/log4j2.properties" -Dlog4j2.shutdownHookEnabled=false
     "-Dkafka.log.level=${KAFKA_LOG_LEVEL:-INFO}")

if [[ $formatted == 0 ]]; then
    cid=${KAFKA_CLUSTER_ID:-}
    while [[ -z $cid || $cid == -* ]]; do   # Kafka's Uuid: 16 random bytes, base64url, no '-' first
        cid=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    done
    if ! java -Xmx256m -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.log.level=WARN \
            "${cp[@]}" kafka.tools.StorageTool format --standalone \
            --config "$props" --cluster-id "$cid" > "$dir/format.log" 2>&1; then
        cat "$dir/format.log" >&2
        die "storage format failed ($dir/format.log)"
    fi
    say "formatted $dir/data (cluster id $cid) in $(elapsed)s"
fi

[[ -f $log ]] && mv -f "$log" "$log.prev"
launcher=()
command -v setsid >/dev/null && launcher=(setsid)   # own session: not killed with the caller's process group
"${launcher[@]}" java "${jvm[@]}" "${cp[@]}" kafka.Kafka "$props" < /dev/null > "$log" 2>&1 &
pid=$!
echo "$pid" > "$pidfile"

fail() {
    say "ERROR: $*"
    echo "---- last 40 lines of $log ----" >&2
    tail -n 40 "$log" >&2 || true
    echo "----" >&2
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
    rm -f "$pidfile"
    exit 1
}

# Usable = the server logged "Kafka Server started" and a metadata request
# lists this broker (kcat, else confluent-kafka; else the log line alone).
metadata_ok() {
    if command -v kcat >/dev/null; then
        kcat -L -b "127.0.0.1:$port" -m 5 2>/dev/null | grep -q "broker 1 at 127.0.0.1:$port"
    elif python3 -c 'import confluent_kafka' 2>/dev/null; then
        python3 - "$port" <<'PY' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": "127.0.0.1:" + sys.argv[1]}).list_topics(timeout=5)
sys.exit(0 if md.brokers else 1)
PY
    else
        port_open "$port"
    fi
}

deadline=$(( $(date +%s) + timeout ))
until grep -q "Kafka Server started" "$log" 2>/dev/null && metadata_ok; do
    kill -0 "$pid" 2>/dev/null || { rc=0; wait "$pid" 2>/dev/null || rc=$?; fail "broker exited (status $rc) during start-up"; }
    (( $(date +%s) < deadline )) || fail "broker not usable within ${timeout}s"
    sleep 0.2
done
say "broker up in $(elapsed)s (log $log)"
echo "pid=$pid bootstrap=127.0.0.1:$port dir=$dir"
