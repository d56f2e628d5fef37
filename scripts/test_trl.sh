#!/usr/bin/env bash
# The TRL lane: TRL's own GRPOTrainer tests run with thermorl's classes swapped in, and with plain TRL where those fail
# (scripts/trl_suite.py), from ../shared/trl-tests beside the checkout; without that folder it prints one line and
# passes. It uses the .venv that scripts/test.sh made and installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "TRL lane: .venv not found: run bash scripts/test.sh first" >&2
  exit 2
fi
export WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
exec .venv/bin/python scripts/trl_suite.py "$@"
