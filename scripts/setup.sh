#!/usr/bin/env bash
# Installs the tools the test suite needs beyond Rust (idempotent; Debian).
#   systemd-analyze  (package systemd)     — verifies systemd/conveyor.service
#   promtool         (from package prometheus, binary only) — lints /metrics
# Debian's prometheus package would start a server from its postinst, so only
# its promtool binary is extracted.
set -euo pipefail
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
need_update=1
apt_update() { if [[ $need_update -eq 1 ]]; then $SUDO apt-get update -qq; need_update=0; fi; }

if ! command -v systemd-analyze >/dev/null; then
    apt_update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
if ! command -v promtool >/dev/null; then
    apt_update
    d=$(mktemp -d)
    (cd "$d" && apt-get download -qq prometheus 2>/dev/null)
    dpkg-deb --fsys-tarfile "$d"/prometheus_*.deb | tar -xO ./usr/bin/promtool > "$d/promtool"
    $SUDO install -m 0755 "$d/promtool" /usr/local/bin/promtool
    rm -rf "$d"
fi
# curl (live /metrics scrape), kcat (independent Kafka client), the C
# toolchain pieces librdkafka's build needs, Java + Maven (Apache Kafka broker)
pkgs=()
pkgs2=()
command -v curl >/dev/null || pkgs+=(curl)
command -v kcat >/dev/null || pkgs+=(kcat)
command -v make >/dev/null || pkgs+=(make)
command -v gcc >/dev/null || pkgs+=(gcc g++)
command -v pkg-config >/dev/null || pkgs+=(pkg-config)
command -v java >/dev/null || pkgs+=(default-jre-headless)
command -v mvn >/dev/null || pkgs+=(maven)
command -v flock >/dev/null || pkgs+=(util-linux)
dpkg -s libssl-dev >/dev/null 2>&1 || pkgs+=(libssl-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || pkgs+=(zlib1g-dev)
if [[ ${#pkgs[@]} -gt 0 ]]; then
    apt_update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi
command -v npm >/dev/null || pkgs2+=(npm)
command -v python3 >/dev/null || pkgs2+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs2+=(python3-venv)
if [[ ${#pkgs2[@]} -gt 0 ]]; then
    apt_update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs2[@]}" >/dev/null
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Azurite (npm) for blob checkpoints, in .cache/node
bash "$root/scripts/azurite.sh" >&2
# The official Python SDKs the tests cross-check against (venv in
# .cache/pyenv, pinned in tests/py/requirements.txt): Event Hubs + blob
# checkpoint store, confluent-kafka's schema registry client and Avro serde,
# Azure Schema Registry + its Avro encoder (also the registry stand-in's `avro`)
if ! "$root/.cache/pyenv/bin/python" -c 'import azure.eventhub, azure.eventhub.extensions.checkpointstoreblobaio, confluent_kafka.schema_registry.avro, azure.schemaregistry.encoder.avroencoder, avro.compatibility' 2>/dev/null; then
    python3 -m venv "$root/.cache/pyenv"
    "$root/.cache/pyenv/bin/pip" install -q --disable-pip-version-check -r "$root/tests/py/requirements.txt" >&2
fi
# Apache Kafka broker jars from Maven Central (cached in .cache/kafka and ~/.m2)
"$(dirname "${BASH_SOURCE[0]}")/kafka/fetch.sh" >&2
# A real schema registry with the Confluent API (Apicurio Registry, built from
# Maven Central into .cache/apicurio)
"$(dirname "${BASH_SOURCE[0]}")/apicurio/fetch.sh" >&2
echo "setup: kcat $(kcat -V 2>&1 | head -1 | awk '{print $2}'), java $(java -version 2>&1 | head -1 | awk -F'"' '{print $2}'), systemd-analyze $(systemd-analyze --version | head -1 | cut -d' ' -f2), $(promtool --version 2>&1 | head -1)"
