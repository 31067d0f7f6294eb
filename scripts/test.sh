#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run the whole suite.
# Fails loudly (non-zero) if anything cannot be installed: no test is skipped for a missing tool.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

# Debian packages: Chromium for the browser tests (Playwright drives /usr/bin/chromium; it never downloads one).
if ! command -v chromium >/dev/null 2>&1; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi
command -v chromium >/dev/null 2>&1 || { echo "scripts/test.sh: chromium is missing after install" >&2; exit 1; }

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

exec python3 -m pytest -q "$@"
