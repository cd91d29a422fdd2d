#!/usr/bin/env bash
# Downloads the Apache Kafka broker classpath (org.apache.kafka:kafka_2.13 from
# Maven Central, see pom.xml) into ${KAFKA_HOME:-<repo>/.cache/kafka}/lib.
# Idempotent: a no-op when lib/ already holds the jars for the current pom.xml.
# Needs: java (>= 17), mvn. Uses the default ~/.m2 cache.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
KAFKA_HOME=${KAFKA_HOME:-$repo/.cache/kafka}
lib=$KAFKA_HOME/lib
stamp=$lib/.pom.sha256
want=$(sha256sum "$here/pom.xml" | cut -d' ' -f1)
start=$(date +%s.%N)

elapsed() { awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }

if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "kafka fetch: up to date ($lib, $(elapsed)s)"
    exit 0
fi

mkdir -p "$KAFKA_HOME"
# Serialise concurrent callers (parallel tests / CI jobs sharing KAFKA_HOME).
exec 9>"$KAFKA_HOME/.fetch.lock"
flock 9
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "kafka fetch: up to date ($lib, $(elapsed)s)"
    exit 0
fi

for tool in java mvn; do
    command -v "$tool" >/dev/null || { echo "kafka fetch: '$tool' not found (need Java >= 17 and Maven)" >&2; exit 1; }
done

tmp=$(mktemp -d "$KAFKA_HOME/.lib.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# (Maven 3.8 prints bare ANSI resets even with -B -q; strip them.)
mvn -B -q -ntp -f "$here/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" \
    | sed 's/\x1b\[[0-9;]*m//g' | { grep -v '^$' || true; }
ls "$tmp"/kafka_2.13-*.jar >/dev/null
echo "$want" > "$tmp/.pom.sha256"
rm -rf "$lib"
mv "$tmp" "$lib"
trap - EXIT
echo "kafka fetch: $(ls "$lib"/*.jar | wc -l) jars ($(basename "$lib"/kafka_2.13-*.jar .jar)) into $lib in $(elapsed)s"
