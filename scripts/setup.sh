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
if ! command -v curl >/dev/null; then
    apt_update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null
fi
echo "setup: systemd-analyze $(systemd-analyze --version | head -1 | cut -d' ' -f2), $(promtool --version 2>&1 | head -1)"
