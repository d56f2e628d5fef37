#!/usr/bin/env bash
# The offline main job, set-up included: bash scripts/quickstart.sh [--field value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/thermorl quickstart "$@"
