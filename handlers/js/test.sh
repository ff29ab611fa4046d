#!/usr/bin/env bash
# Run the JavaScript logic tests natively (no component, no kasm): the SDK's, then the
# handlers'. Needs Node.js 20 or later, and the installs handlers/build-js.sh makes.
#
# Usage: handlers/js/test.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sdk="$(cd "$here/../../guest-sdk-js" && pwd)"

(cd "$sdk" && node --test --test-reporter=dot test/)
(cd "$here" && node --test --test-reporter=dot live-updates/test/)
