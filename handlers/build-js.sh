#!/usr/bin/env bash
# Build the JavaScript handlers and test fixtures into handlers/dist/ (js-*.wasm), with the
# JavaScript SDK (guest-sdk-js/) and componentize-js. `handlers/build.sh` runs it last.
#
# The first run installs, with `npm ci` from the committed lockfiles, the SDK's tools
# (componentize-js, esbuild) into guest-sdk-js/node_modules and the handlers' dependencies
# into handlers/js/node_modules (the SDK is linked there, not copied: SDK changes need no
# reinstall). A lockfile newer than its install installs again. A component is rebuilt only
# when something it is made of is newer than it: its own sources (tests aside), the SDK, the
# WIT, the lockfiles, this script. componentize-js takes ~15 s per component on one core;
# KASM_JS_JOBS (default 2) components build at once. Nothing changed: well under a second.
#
# Usage: handlers/build-js.sh        (from anywhere; needs Node.js 20 or later and npm)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
sdk="$root/guest-sdk-js"
js="$here/js"
dist="$here/dist"
jobs="${KASM_JS_JOBS:-2}"

if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
    echo "error: the JavaScript handlers need Node.js 20 or later to build (found: $(node --version 2>&1 || echo none))" >&2
    exit 1
fi

# The SDK ships the contract; it must be the one in wit/.
if ! diff -r "$root/wit" "$sdk/wit" >/dev/null; then
    echo "error: guest-sdk-js ships a copy of wit/ that differs from it; update the copy:" >&2
    echo "  cp $root/wit/*.wit $sdk/wit/" >&2
    exit 1
fi

# npm ci into $1 when its lockfile is newer than the last install there.
install() {
    local folder="$1" stamp="$1/node_modules/.kasm-installed"
    if [[ -f "$stamp" && ! "$folder/package-lock.json" -nt "$stamp" && ! "$folder/package.json" -nt "$stamp" ]]; then
        return 0
    fi
    if ! (cd "$folder" && npm ci --no-audit --no-fund --loglevel=error >"$folder/.npm-ci.log" 2>&1); then
        echo "error: npm ci in $folder failed:" >&2
        cat "$folder/.npm-ci.log" >&2
        return 1
    fi
    rm -f "$folder/.npm-ci.log"
    touch "$stamp"
}
install "$sdk"
install "$js"

# <source> <component in dist/> <capabilities, comma-separated; "-": those of package.json>
components=(
    "js/live-updates js-live-updates -"
    "js/fixtures/producer-only.js js-producer-only producer"
    "js/fixtures/capabilities.js js-capabilities producer,kv,sql,websocket"
    "js/fixtures/raises.js js-raises none"
    "js/fixtures/retryable.js js-retryable none"
    "js/fixtures/loops.js js-loops none"
    "js/fixtures/grows.js js-grows none"
    "js/fixtures/ok.js js-ok none"
    "js/fixtures/echo.js js-echo producer"
)

# Whether $1 (a component) is older than anything it is made of ($2: its source).
stale() {
    local out="$1" src="$2"
    [[ ! -f "$out" ]] && return 0
    [[ -n "$(find "$src" "$sdk/src" "$sdk/build" "$sdk/package-lock.json" "$js/package-lock.json" \
        "$root/wit" "${BASH_SOURCE[0]}" "$here/interpreted.sh" -newer "$out" -not -path '*/node_modules/*' \
        -not -path '*/test/*' \( -name '*.js' -o -name '*.ts' -o -name '*.json' -o -name '*.wit' -o -name '*.sh' \) \
        -print -quit)" ]]
}

build_with() {
    local src="$1" name="$2" out="$3"
    shift 3
    node "$sdk/bin/kasm-js.js" build "$src" "$@" --name "$name" --output "$out"
}

logs="$js/node_modules"
# shellcheck source=handlers/interpreted.sh
source "$here/interpreted.sh"
build_components
