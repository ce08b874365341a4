#!/usr/bin/env bash
# Set up the benchmark environment .venv-bench: potstill plus the libraries it is
# compared against. It is kept apart from .venv because torchtune 0.6.1 imports only with
# torchao==0.11.0, while the product may use a newer torchao.
#   bash bench/setup.sh && .venv-bench/bin/python bench/loss.py
# Safe to re-run: an existing .venv-bench is reused and pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv-bench
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
# torch first and pinned, as scripts/setup.sh does: an unpinned torch pulls gigabytes of
# CUDA packages. In one resolve after it, potstill's own torch==2.13.0 keeps it in place.
"${pip[@]}" torch==2.13.0 2>&1 | grep -v "is ignored" || true
"${pip[@]}" -e . torchtune==0.6.1 torchao==0.11.0 trl==1.16.0 2>&1 | grep -v "is ignored" || true
TRL_EXPERIMENTAL_SILENCE=1 "$venv/bin/python" - <<'EOF'
import importlib.metadata as md

import potstill  # noqa: F401
import torch
import torchtune.modules.loss  # noqa: F401
from trl.experimental.gkd import GKDTrainer  # noqa: F401

assert torch.__version__.startswith("2.13.0"), torch.__version__
for name, version in [("torchtune", "0.6.1"), ("torchao", "0.11.0"), ("trl", "1.16.0")]:
    assert md.version(name) == version, f"{name} {md.version(name)} != {version}"
print(f"torch {torch.__version__}, transformers {md.version('transformers')}")
EOF
echo "the benchmark environment is set up in $venv"
