#!/usr/bin/env bash
# Builds a runnable Apicurio Registry 2.4.2.Final (in-memory storage; the
# Confluent Schema Registry API under /apis/ccompat/v7) from Maven Central:
# the published io.apicurio:apicurio-registry-app jar re-augmented by the
# Quarkus Maven plugin (see pom.xml for why 2.4.2 and the two substitutions).
# Output: ${APICURIO_HOME:-<repo>/.cache/apicurio}/target/quarkus-app/quarkus-run.jar
# Idempotent: a no-op when that jar was built from the current pom.xml.
# Needs: java (>= 17), mvn. ~210 MB of Maven downloads the first time.
# Run: java -Dquarkus.http.port=PORT -jar .../quarkus-run.jar
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
APICURIO_HOME=${APICURIO_HOME:-$repo/.cache/apicurio}
jar=$APICURIO_HOME/target/quarkus-app/quarkus-run.jar
stamp=$APICURIO_HOME/.pom.sha256
want=$(sha256sum "$here/pom.xml" | cut -d' ' -f1)
start=$(date +%s)

if [[ -f $jar && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "apicurio fetch: up to date ($jar)"
    exit 0
fi
mkdir -p "$APICURIO_HOME"
exec 9>"$APICURIO_HOME/.fetch.lock"
flock 9
if [[ -f $jar && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    echo "apicurio fetch: up to date ($jar)"
    exit 0
fi
for tool in java mvn; do
    command -v "$tool" >/dev/null || { echo "apicurio fetch: '$tool' not found (need Java >= 17 and Maven)" >&2; exit 1; }
done
rm -rf "$APICURIO_HOME/target"
log=$APICURIO_HOME/build.log
if ! mvn -B -ntp -f "$here/pom.xml" package -DskipTests -Dquarkus.package.type=fast-jar \
    -Dapicurio.out="$APICURIO_HOME/target" >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "apicurio fetch: the build failed (log: $log)" >&2
    exit 1
fi
[[ -f $jar ]] || { echo "apicurio fetch: no $jar after the build (log: $log)" >&2; exit 1; }
echo "$want" >"$stamp"
echo "apicurio fetch: built $jar in $(( $(date +%s) - start ))s"
