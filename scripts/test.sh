#!/usr/bin/env bash
# The whole test suite (what CI runs): installs missing test tools, runs every
# cargo test (unit, integration, end-to-end against the built binary), then
# checks that need the binary and system tools: the systemd unit verifies and
# a live /metrics scrape passes `promtool check metrics`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -x "$(command -v cargo)" ]] || source "$HOME/.cargo/env"

scripts/setup.sh

# one real Apache Kafka broker shared by the Kafka tests (tests that restart
# a broker start their own)
kafka_dir=$(mktemp -d)
log=$(mktemp)
cleanup() { scripts/kafka/stop.sh "$kafka_dir" >/dev/null 2>&1 || true; rm -rf "$kafka_dir" "$log"; }
trap cleanup EXIT
kafka_out=$(scripts/kafka/start.sh 0 "$kafka_dir")
export CONVEYOR_TEST_KAFKA=$(sed -n 's/.*bootstrap=\([^ ]*\).*/\1/p' <<<"$kafka_out")
echo "test Kafka broker at $CONVEYOR_TEST_KAFKA"
set +e
cargo test --locked --workspace --all-targets --no-fail-fast 2>&1 | tee "$log"
cargo_rc=${PIPESTATUS[0]}
set -e
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p+0, f+0 }' "$log")
if [[ $cargo_rc -ne 0 && $failed -eq 0 ]]; then failed=1; fi

check() { # name, command...
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); echo "check $name: ok"; else failed=$((failed + 1)); echo "check $name: FAILED"; fi
}

verify_systemd() { scripts/verify-systemd.sh; }

live_metrics() {
    local dir; dir=$(mktemp -d)
    sed -e 's/\${CONVEYOR_LISTEN:-127.0.0.1:9464}/127.0.0.1:0/' -e "s#\${CONVEYOR_DATA:-./data}#$dir#" \
        -e 's/\${CONVEYOR_SIM_RATE:-20}/100/' -e "s#\${CONVEYOR_SIM_LISTEN:-127.0.0.1:9470}#127.0.0.1:$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')#g" config.yaml > "$dir/config.yaml"
    target/debug/conveyor run --config "$dir/config.yaml" 2> "$dir/log" &
    local pid=$! addr="" i
    for i in $(seq 1 100); do
        addr=$(grep -o '"listen":"[^"]*"' "$dir/log" | head -1 | cut -d'"' -f4 || true)
        [[ -n $addr ]] && break
        sleep 0.1
    done
    sleep 1
    local ok=0
    if [[ -n $addr ]] && curl -sf "http://$addr/metrics" > "$dir/metrics.txt" && promtool check metrics < "$dir/metrics.txt"; then
        ok=1
    fi
    kill -TERM "$pid"
    local rc=0; wait "$pid" || rc=$?
    [[ $rc -eq 0 ]] || { echo "daemon exited $rc after SIGTERM"; ok=0; }
    rm -rf "$dir"
    [[ $ok -eq 1 ]]
}

no_kafka_build() { cargo check --locked --no-default-features --features eventhubs --quiet && ! cargo tree --no-default-features --features eventhubs -e normal -i rdkafka >/dev/null 2>&1; }

alert_rules() {
    promtool check rules observability/prometheus/alerts/conveyor.yml &&
        promtool test rules observability/prometheus/alerts/conveyor_test.yml &&
        promtool check config observability/prometheus/prometheus.yml >/dev/null &&
        python3 -m json.tool observability/grafana/dashboards/pipeline-overview.json >/dev/null
}

check systemd-unit verify_systemd
check alert-rules alert_rules
check builds-without-kafka no_kafka_build
check promtool-metrics live_metrics

echo
echo "conveyor test suite: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
