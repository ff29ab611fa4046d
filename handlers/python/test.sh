#!/usr/bin/env bash
# Run the Python logic tests natively (no component, no kasm): the SDK's, then each Python
# handler's (one process per handler: each has a module named `handler`). Uses Python 3.11 or
# later from PATH, or $PYTHON; needs nothing installed.
#
# Usage: handlers/python/test.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sdk="$(cd "$here/../../guest-sdk-python" && pwd)"
python="${PYTHON:-python3}"
export PYTHONPATH="$sdk/src"
export PYTHONDONTWRITEBYTECODE=1

"$python" -m unittest discover --start-directory "$sdk/tests" --top-level-directory "$sdk/tests" --quiet
for handler in notification recurring audit; do
    (cd "$here/$handler" && "$python" -m unittest --quiet)
done
