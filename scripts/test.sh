#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, run the linters, then the whole suite.
# Fails loudly (non-zero) if anything cannot be installed or a linter finds an error: no test is skipped for a
# missing tool, and lint errors are not warnings.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

# Debian packages: Chromium for the browser tests (Playwright drives /usr/bin/chromium; it never downloads one),
# Node.js and npm to check that the shipped web assets match a fresh build, socat for the benchmark baselines.
missing=""
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
command -v socat >/dev/null 2>&1 || missing="$missing socat"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
if [ -n "$missing" ]; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $missing
fi
for tool in chromium node npm socat curl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "scripts/test.sh: $tool is missing after install" >&2; exit 1; }
done

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
npm --prefix clients/web ci --no-audit --no-fund --loglevel=error
# piping-server (npm, into benchmarks/.cache) for the baselines the benchmark tests run against, with curl.
python3 -c "from benchmarks.servers import ensure_piping_server; ensure_piping_server(install=True)"

# Linters (settings in pyproject.toml): ruff for style and likely bugs, mypy for types. Either one failing stops
# the run here, before the tests, with its findings above this line.
echo "scripts/test.sh: ruff check relay clients tests benchmarks" >&2
python3 -m ruff check relay clients tests benchmarks || { echo "scripts/test.sh: ruff found errors (above)" >&2; exit 1; }
echo "scripts/test.sh: mypy" >&2
python3 -m mypy || { echo "scripts/test.sh: mypy found errors (above)" >&2; exit 1; }

exec python3 -m pytest -q "$@"
