#!/usr/bin/env bash
# Install everything the test suite needs, then run it: lint, tests, and the short
# benchmark and soak runs. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
npm ci --no-audit --no-fund --loglevel=error

# Debian packages the tests drive for real: headless Chromium (never a downloaded browser),
# nginx in front of the server, and Prometheus scraping it.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx)
[ -x /usr/bin/prometheus ] || command -v prometheus >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

ruff check .
python -m pytest "$@"
# Short runs of the soak and the benchmark: they must complete, with nothing lost. The quick
# benchmark measures plainsocket and raw websockets only (no peers to install: bench/README.md).
python scripts/soak.py --quick
python bench/run.py --quick
python bench/cluster.py --quick
