#!/usr/bin/env bash
# The test suite, set-up included: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
