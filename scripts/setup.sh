#!/usr/bin/env bash
# Set-up on a machine with only Python 3.11: a virtual environment in .venv with the project
# (editable) and its test tools. Idempotent: a second run only checks. Offline-safe apart
# from the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
# torch first and pinned: on a CPU machine the 2.13.0 CPU wheel is what installs.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
