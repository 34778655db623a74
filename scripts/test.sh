#!/usr/bin/env bash
# Install everything the test suite needs, then run it: lint, tests, and the short
# benchmark and soak runs. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
npm ci --no-audit --no-fund --loglevel=error

# Headless Chromium for the browser tests: Debian's package, never a downloaded browser.
if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null
    fi
fi

ruff check .
python -m pytest "$@"
# Short runs of the soak and the benchmark: they must complete, with nothing lost.
python scripts/soak.py --quick
python bench/run.py --quick
python bench/cluster.py --quick
