#!/usr/bin/env bash
# The console's browser tests: `kasm dev` with a token, driven in headless Chromium by
# Playwright for Python. Needs `make build` first, and Debian's chromium
# (`apt-get install chromium`). Screenshots go to target/ui-screenshots/.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${root}/target/ui-venv"
chromium="${KASM_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "${chromium}" ]; then
  echo "error: no Chromium at ${chromium}: install Debian's (apt-get install chromium) or set KASM_CHROMIUM" >&2
  exit 1
fi
stamp="${venv}/.requirements"
if [ ! -x "${venv}/bin/python" ] || ! cmp -s "${root}/tests/ui/requirements.txt" "${stamp}"; then
  python3 -m venv "${venv}"
  "${venv}/bin/pip" install --quiet --disable-pip-version-check -r "${root}/tests/ui/requirements.txt"
  cp "${root}/tests/ui/requirements.txt" "${stamp}"
fi
cd "${root}"
KASM_CHROMIUM="${chromium}" exec "${venv}/bin/python" -m pytest -q -p no:cacheprovider tests/ui "$@"
