"""`python -m thermorl.bench ARMS.yaml ...` is `thermorl bench`; `--run-plan PLAN.json` is one run, as the
scheduler starts it in a subprocess."""

import sys
from pathlib import Path

from .command import bench_command
from .run import run_one

if len(sys.argv) == 3 and sys.argv[1] == "--run-plan":
    run_one(Path(sys.argv[2]))
else:
    sys.exit(bench_command(sys.argv[1:]))
