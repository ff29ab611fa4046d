#!/usr/bin/env bash
# Run the JavaScript logic tests natively (no component, no kasm): the SDK's, then the
# handlers'. Needs Node.js 20 or later, and the installs handlers/build-js.sh makes.
#
# Usage: handlers/js/test.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sdk="$(cd "$here/../../guest-sdk-js" && pwd)"
for folder in "$sdk" "$here"; do
    if [[ ! -d "$folder/node_modules" ]]; then
        echo "error: $folder/node_modules is missing: run \`make handlers\` (handlers/build-js.sh installs it)" >&2
        exit 1
    fi
done

(cd "$sdk" && node --test --test-reporter=dot test/)
(cd "$here" && node --test --test-reporter=dot live-updates/test/)
