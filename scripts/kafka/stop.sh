#!/usr/bin/env bash
# Stops a broker started by start.sh: SIGTERM (controlled shutdown), wait up to
# KAFKA_STOP_TIMEOUT seconds (default 30), then SIGKILL.
#
#   scripts/kafka/stop.sh PID|DIR
#
# DIR is start.sh's data dir (reads DIR/kafka.pid). Exits 0 if the broker is
# already gone. Only signals a process whose command line runs kafka.Kafka.
set -euo pipefail
arg=${1:?usage: stop.sh PID|DIR}
timeout=${KAFKA_STOP_TIMEOUT:-30}
pidfile=""
if [[ $arg =~ ^[0-9]+$ ]]; then
    pid=$arg
else
    pidfile=$arg/kafka.pid
    [[ -f $pidfile ]] || { echo "kafka stop: no $pidfile (not running?)" >&2; exit 0; }
    pid=$(cat "$pidfile")
fi

# A zombie still answers kill -0 (and a container's PID 1 may never reap it).
alive() { kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; }
is_broker() { [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q 'kafka\.Kafka '; }

if ! alive; then
    echo "kafka stop: pid $pid not running" >&2
    [[ -n $pidfile ]] && rm -f "$pidfile"
    exit 0
fi
is_broker || { echo "kafka stop: pid $pid is not a Kafka broker; not signalling it" >&2; exit 1; }

t0=$(date +%s.%N)
kill -TERM "$pid"
deadline=$(( $(date +%s) + timeout ))
while alive && (( $(date +%s) < deadline )); do sleep 0.1; done
how=TERM
if alive; then
    echo "kafka stop: pid $pid still alive after ${timeout}s, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do alive || break; sleep 0.1; done
    how=KILL
fi
[[ -n $pidfile ]] && rm -f "$pidfile"
echo "kafka stop: pid $pid stopped (SIG$how) in $(awk -v s="$t0" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')s" >&2
