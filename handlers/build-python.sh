#!/usr/bin/env bash
# Build the Python handlers and test fixtures into handlers/dist/ (py-*.wasm), with the
# Python SDK (guest-sdk-python/) and componentize-py. `handlers/build.sh` runs it last.
#
# The first run makes a virtualenv in target/python/ (Python 3.11 or later from PATH, or
# $PYTHON) and installs componentize-py from PyPI into it, then the SDK (editable: SDK
# changes need no reinstall). A component is rebuilt only when something it is made of is
# newer than it: its own sources (tests aside), the SDK, the WIT, this script.
# componentize-py takes ~17 s per component on one core; KASM_PY_JOBS (default 2) components
# build at once. Nothing changed: well under a second.
#
# Usage: handlers/build-python.sh        (from anywhere)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
sdk="$root/guest-sdk-python"
venv="$root/target/python"
dist="$here/dist"
jobs="${KASM_PY_JOBS:-2}"

# Verified together: componentize-py 0.25.1 (CPython 3.14 inside the component) and the
# setuptools that builds the SDK.
componentize_py=0.25.1
setuptools=80.9.0

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: the Python handlers need Python 3.11 or later to build (found: $("$python" --version 2>&1)); set PYTHON" >&2
    exit 1
fi

# The SDK ships the contract; it must be the one in wit/.
if ! diff -r "$root/wit" "$sdk/src/kasm_guest/wit/kasm" >/dev/null; then
    echo "error: guest-sdk-python ships a copy of wit/ that differs from it; update the copy:" >&2
    echo "  cp $root/wit/*.wit $sdk/src/kasm_guest/wit/kasm/" >&2
    exit 1
fi

stamp="$venv/.kasm-tools-$componentize_py-$setuptools"
if [[ ! -f "$stamp" ]]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "componentize-py==$componentize_py" "setuptools==$setuptools"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-build-isolation --no-deps --editable "$sdk"
    touch "$stamp"
fi

# The WASI 0.2 WIT that `wasi:http` needs (the notification handler declares `http`): the copy
# in the wasmtime-wasi-http crate the host is built with, so the version is the host's. Looked
# up once, before the first component that is rebuilt (`cargo metadata` is most of the time a
# build with nothing to do would take).
wasi_wit() {
    if [[ -z "${KASM_WASI_WIT:-}" ]]; then
        local manifest
        manifest="$(cargo metadata --format-version 1 --manifest-path "$root/Cargo.toml" \
            | "$python" -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "wasmtime-wasi-http"))')"
        export KASM_WASI_WIT="$(dirname "$manifest")/wit/deps"
    fi
    if [[ ! -f "$KASM_WASI_WIT/http.wit" ]]; then
        echo "error: no wasi:http WIT in $KASM_WASI_WIT (KASM_WASI_WIT, or the wasmtime-wasi-http crate's wit/deps)" >&2
        exit 1
    fi
}

# <source> <component in dist/> <capabilities, comma-separated; "-": those of [tool.kasm]>
components=(
    "python/notification py-notification -"
    "python/recurring py-recurring -"
    "python/audit py-audit -"
    "python/fixtures/producer_only.py py-producer-only producer"
    "python/fixtures/capabilities.py py-capabilities producer,kv,sql,websocket"
    "python/fixtures/raises.py py-raises none"
    "python/fixtures/retryable.py py-retryable none"
    "python/fixtures/loops.py py-loops none"
    "python/fixtures/grows.py py-grows none"
    "python/fixtures/ok.py py-ok none"
    "python/fixtures/echo.py py-echo producer"
)

# Whether $1 (a component) is older than anything it is made of ($2: its source).
stale() {
    local out="$1" src="$2"
    [[ ! -f "$out" ]] && return 0
    [[ -n "$(find "$src" "$sdk/src" "$sdk/pyproject.toml" "$root/wit" "${BASH_SOURCE[0]}" "$here/interpreted.sh" \
        -newer "$out" \( -name '*.py' -o -name '*.wit' -o -name '*.toml' -o -name '*.sh' \) \
        -not -name 'test_*.py' -not -path '*/__pycache__/*' -print -quit)" ]]
}

build_with() {
    local src="$1" name="$2" out="$3"
    shift 3
    "$venv/bin/kasm-py" build "$src" "$@" --name "$name" --output "$out"
}
before_first_build() {
    wasi_wit
}

logs="$venv"
# shellcheck source=handlers/interpreted.sh
source "$here/interpreted.sh"
build_components
