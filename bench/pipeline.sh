#!/usr/bin/env bash
# The whole seed topology (config.yaml) on the embedded transport, simulated
# APIs at zero latency and no injected errors: end-to-end events/s (both
# sources → result rows on disk) and peak RSS of the daemon.
#
#   bench/pipeline.sh [EVENTS_PER_SOURCE] [RATE_PER_SOURCE]   (defaults 5000, 20000)
#
# Uses target/release/conveyor (cargo build --release first). Prints wall
# time from start until every valid event has its result row, events/s,
# the daemon's CPU seconds and peak RSS (VmHWM). Then the baseline, in the
# same script: `conveyor bench http`, the simulated APIs' round-trip ceiling
# on this machine (a pooled client and the in-process simulator, nothing
# else), and the ceiling it sets on events/s: each event makes at least two
# API calls (its enrichment, its attachment).
#
# The data directory is a fresh `mktemp -d` under $TMPDIR: set
# TMPDIR=/dev/shm to take the disk (file creation, fsync) out of the figure.
# WRAP=cmd runs the daemon as `cmd conveyor run ...` (e.g. a profiler that
# execs its argument; the CPU and RSS figures are then the wrapper's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
n=${1:-5000}
rate=${2:-20000}
bin=${CONVEYOR:-target/release/conveyor}
dir=$(mktemp -d)
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
sed -e 's/\${CONVEYOR_LISTEN:-127.0.0.1:9464}/127.0.0.1:0/' \
    -e "s#\${CONVEYOR_DATA:-./data}#$dir#g" \
    -e "s#\${CONVEYOR_SIM_LISTEN:-127.0.0.1:9470}#127.0.0.1:$port#g" \
    -e "s/\${CONVEYOR_SIM_RATE:-20}/$rate\n    count: $n/" \
    -e 's/^  latency: 2ms/  latency: 0s/' -e 's/^  error_rate: 0.02 .*/  error_rate: 0/' \
    -e 's/malformed_ratio: 0.01/malformed_ratio: 0/' \
    config.yaml > "$dir/config.yaml"
start=$(date +%s.%N)
CONVEYOR_LOG=warn ${WRAP:-} "$bin" run --config "$dir/config.yaml" 2> "$dir/log" &
pid=$!
# every verisk event ends as an xact result row; every claimx event as an
# entity row (and, with an attachment, a claimx result row)
want=$((2 * n))
while :; do
    got=$( (cat "$dir"/results/xact-results-*.jsonl "$dir"/results/claimx-entities-*.jsonl 2>/dev/null || true) | wc -l)
    [[ $got -ge $want ]] && break
    if ! kill -0 "$pid" 2>/dev/null; then echo "daemon died:"; tail -5 "$dir/log"; exit 1; fi
    sleep 0.05
done
end=$(date +%s.%N)
read -r ut st < <(awk '{print $14, $15}' "/proc/$pid/stat")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
python3 - "$start" "$end" "$want" "$ut" "$st" "$hwm" <<'PY'
import sys
start, end, want, ut, st, hwm = sys.argv[1:]
secs = float(end) - float(start)
cpu = (int(ut) + int(st)) / 100
print(f"seed pipeline: {want} events end to end in {secs:.2f}s = {int(want)/secs:.0f} events/s; "
      f"daemon CPU {cpu:.2f}s ({int(want)/cpu:.0f} events per CPU-s); peak RSS {int(hwm)/1024:.1f} MB")
PY
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
line=$("$bin" bench http --requests 40000 --concurrency 64 --attachment-bytes 8192)
echo "baseline, $line"
python3 - "$want" "$start" "$end" "$line" <<'PY'
import re, sys
want, start, end, line = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rps = float(re.search(r"= (\d+) req/s", line).group(1))
eps = want / (end - start)
print(f"ceiling from the API round trips alone (2 calls per event): {rps/2:.0f} events/s; "
      f"the pipeline reaches {eps/(rps/2):.2f} of it")
PY
