#!/usr/bin/env bash
# Event Hubs pass-through benchmark (issue 4, "Performance"):
#
#   bench/eventhubs_passthrough.sh [N [SIZE]]     # defaults: N=200000 SIZE=1024
#
# On one local Event Hubs test broker (`conveyor dev eventhubs`, 4 partitions)
# it produces N events of SIZE bytes into bench-in with the Python SDK, then
# runs (a) Conveyor's pass-through worker and (b) the same stage written with
# azure-eventhub (bench/eh_passthrough.py), each with its own consumer group,
# and reports wall msgs/s, msgs per CPU-second of the stage process, peak RSS
# and the ratios a/b (driver: bench/eh_bench.py).
#
# Env: CONVEYOR (default target/release/conveyor), PYTHON (default
# .cache/pyenv/bin/python, made by scripts/setup.sh), STAGES="a b", KEYS=K
# (the input events carry K distinct partition keys, many to a batch; the
# stages keep each event's key, so their output is a keyed send).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
conveyor=${CONVEYOR:-$repo/target/release/conveyor}
py=${PYTHON:-$repo/.cache/pyenv/bin/python}
[[ -x $conveyor ]] || { echo "build first: cargo build --release" >&2; exit 1; }
[[ -x $py ]] || { echo "run scripts/setup.sh first (Python venv with azure-eventhub)" >&2; exit 1; }
exec "$py" "$repo/bench/eh_bench.py" --conveyor "$conveyor" --count "${1:-200000}" --size "${2:-1024}" --stages "${STAGES:-a b}" --keys "${KEYS:-0}"
