#!/usr/bin/env bash
# Azurite (the Azure Storage emulator, npm package `azurite`) for the blob tests.
#
#   scripts/azurite.sh                 install into .cache/node if missing (idempotent)
#   scripts/azurite.sh start DIR PORT  install if missing, then exec azurite-blob in the
#                                      foreground on 127.0.0.1:PORT with its data in DIR
#   scripts/azurite.sh bin             print the path of the azurite-blob executable
#
# Needs node + npm (Node 20) and the npm registry. AZURITE_VERSION overrides the pin.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.cache/node"
version="${AZURITE_VERSION:-3.37.0}"
bin="$prefix/node_modules/.bin/azurite-blob"

install() {
    if [[ -x "$bin" ]] && [[ "$(node -p "require('$prefix/node_modules/azurite/package.json').version" 2>/dev/null)" == "$version" ]]; then
        return 0
    fi
    command -v node >/dev/null || { echo "azurite.sh: node is not installed (need Node >= 18)" >&2; exit 1; }
    command -v npm >/dev/null || { echo "azurite.sh: npm is not installed" >&2; exit 1; }
    mkdir -p "$prefix"
    # A lock so that parallel test binaries do not install twice at once.
    exec 9>"$prefix/.install.lock"
    if command -v flock >/dev/null; then flock 9; fi
    if [[ -x "$bin" ]] && [[ "$(node -p "require('$prefix/node_modules/azurite/package.json').version" 2>/dev/null)" == "$version" ]]; then
        return 0
    fi
    echo "azurite.sh: installing azurite@$version into $prefix" >&2
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "azurite@$version" >&2
    [[ -x "$bin" ]] || { echo "azurite.sh: install finished but $bin is missing" >&2; exit 1; }
}

case "${1:-install}" in
    install) install ;;
    bin) install; echo "$bin" ;;
    start)
        [[ $# -eq 3 ]] || { echo "usage: $0 start DIR PORT" >&2; exit 2; }
        install
        mkdir -p "$2"
        exec "$bin" --blobHost 127.0.0.1 --blobPort "$3" --location "$2" --skipApiVersionCheck --silent
        ;;
    *) echo "usage: $0 [install|bin|start DIR PORT]" >&2; exit 2 ;;
esac
