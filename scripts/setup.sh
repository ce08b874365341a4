#!/usr/bin/env bash
# Set up potstill from nothing: a .venv with CPU PyTorch (pinned) and the package.
#   bash scripts/setup.sh          # for running potstill
#   bash scripts/setup.sh --test   # also Debian's headless Chromium, for the HTML report test
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# torch first and pinned: an unpinned torch pulls gigabytes of CUDA packages.
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "is ignored" || true
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import potstill, torch; assert torch.__version__.startswith('2.13.0')"

if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's chromium package to run the HTML report test" >&2
  fi
fi
echo "potstill is set up in .venv"
