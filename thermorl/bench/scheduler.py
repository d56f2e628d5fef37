"""Running a bench: the (arm, seed) runs not finished yet, each in its own subprocess (`--threads` CPU threads, one by
default), `--jobs` at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UserError
from .arms import run_plan
from .run import write_json



def _settings(plan: dict[str, Any]) -> dict[str, Any]:
    """What a finished run must share with the current plan to be reused: all but where it was written."""
    recipe = {k: v for k, v in plan["recipe"].items() if k != "output_dir"}
    return {**{k: plan.get(k) for k in ("format", "arm", "seed", "evaluation")}, "recipe": recipe}


def pending_runs(spec: dict[str, Any], out: Path, extra: dict[str, Any]) -> list[tuple[str, int, dict, Path]]:
    """The (arm, seed, plan, run folder) not finished yet; a finished run made with other settings is an error."""
    pending = []
    for seed in spec["seeds"]:
        for arm in spec["arms"]:
            run_dir = out / "runs" / arm / f"seed{seed}"
            plan = run_plan(spec, arm, seed, extra, run_dir)
            result = run_dir.with_name(f"seed{seed}.json")
            if result.is_file():
                stored = json.loads(result.read_text())
                if _settings(stored) != _settings(plan):
                    raise UserError(f"{result} was made with other settings than {arm!r} seed {seed} has now; "
                                    "use another --out or delete it")
                continue
            pending.append((arm, seed, plan, run_dir))
    return pending


def run_bench(spec: dict[str, Any], out: Path, extra: dict[str, Any], jobs: int = 1, threads: int = 1) -> list[str]:
    """Run every missing (arm, seed), `jobs` at a time, each on `threads` CPU threads; returns the runs that failed."""
    scored = "validation" if spec["evaluation"].get("split") == "validation" else "held-out"
    pending = []
    for arm, seed, plan, run_dir in pending_runs(spec, out, extra):
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        write_json(run_dir.with_name(f"seed{seed}.plan.json"), plan)
        pending.append((arm, seed, run_dir.with_name(f"seed{seed}.plan.json")))
    done = sum(len(spec["seeds"]) for _ in spec["arms"]) - len(pending)
    print(f"bench: {len(pending)} run(s) to do, {done} already done, {jobs} at a time", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    running: list[tuple[str, int, Path, subprocess.Popen, float]] = []
    failed = []
    while pending or running:
        while pending and len(running) < jobs:
            arm, seed, plan_path = pending.pop(0)
            log = open(plan_path.with_name(f"seed{seed}.log"), "w")
            process = subprocess.Popen([sys.executable, "-m", "thermorl.bench", "--run-plan", str(plan_path)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env)
            log.close()
            running.append((arm, seed, plan_path, process, time.perf_counter()))
        time.sleep(0.5)
        for entry in list(running):
            arm, seed, plan_path, process, began = entry
            if process.poll() is None:
                continue
            running.remove(entry)
            if process.returncode == 0:
                final = json.loads(plan_path.with_name(f"seed{seed}.json").read_text())["final"]
                print(f"  {arm} seed {seed}: {scored} pass@1 T=1 {final['pass@1 T=1']:.3f}, greedy "
                      f"{final['pass@1 greedy']:.3f} ({time.perf_counter() - began:.0f} s)", flush=True)
            else:
                failed.append(f"{arm} seed {seed}")
                print(f"  {arm} seed {seed}: FAILED (exit {process.returncode}); see "
                      f"{plan_path.with_name(f'seed{seed}.log')}", flush=True)
    return failed
