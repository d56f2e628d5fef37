"""The quickstart's wall time with the thread count `thermorl` chooses vs torch's default, idle and beside a
CPU-bound process; and whether the thread count changes the quickstart's numbers.

Four runs of `python -m thermorl quickstart` (the whole job: accuracy before, 300 SAPO steps, accuracy after), the
tiny model's warm-up cached beforehand (timed once, with the chosen setting) so every run does the same work:

  chosen   OMP_NUM_THREADS unset: thermorl times the model at 1 thread and at torch's default and keeps the faster
  default  OMP_NUM_THREADS = the number of CPUs torch uses by default, so thermorl leaves torch as it is
  idle / busy   without / with `python -c 'while True: pass'` running beside it

A run still going after --timeout seconds is stopped and reported as "> timeout". The machine's load average is
printed with each run: other processes change every number here.

    python benchmarks/cpu_threads.py [--steps 300] [--timeout 600] [--out docs/cpu_threads.json] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def quickstart(env: dict, out: Path, steps: int, timeout: float) -> dict:
    command = [sys.executable, "-m", "thermorl", "quickstart", "--output_dir", str(out), "--max_steps", str(steps),
               "--disable_tqdm", "true"]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "load_before": load, "timed_out_after": timeout}
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"quickstart failed:\n{completed.stderr[-3000:]}")
    result = json.loads((out / "quickstart_result.json").read_text())
    threads = [line for line in completed.stdout.splitlines() if line.startswith("CPU threads:")]
    return {"seconds": round(seconds, 1), "load_before": load, "threads_line": threads[0] if threads else None,
            "accuracy_before": result["accuracy_before"], "accuracy_after": result["accuracy_after"],
            "final_reward": result["reward_curve"][-1][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", default=None, help="also write the results here as JSON")
    parser.add_argument("--cache", default=None, help="THERMORL_CACHE for the runs (default: a fresh temporary one)")
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    settings = {"chosen": base, "default": {**base, "OMP_NUM_THREADS": str(default_threads)}}
    results = {"cpus": os.cpu_count(), "torch_default_threads": default_threads, "steps": args.steps, "runs": {}}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for env in settings.values():
            env["THERMORL_CACHE"] = args.cache or str(work / "cache")
        started = time.perf_counter()
        quickstart(settings["chosen"], work / "warmup", 1, args.timeout)
        results["warmup_seconds"] = round(time.perf_counter() - started, 1)
        print(f"warm-up (or its cache) and 1 training step: {results['warmup_seconds']} s", flush=True)
        for load in ("idle", "busy"):
            neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
            try:
                for name, env in settings.items():
                    run = quickstart(env, work / f"{name}-{load}", args.steps, args.timeout)
                    results["runs"][f"{name}/{load}"] = run
                    took = f"{run['seconds']} s" if run["seconds"] is not None else f"> {args.timeout:.0f} s"
                    print(f"{name:>8} {load}: {took} (load average before {run['load_before']:.2f}) "
                          f"{run.get('threads_line') or ''} after RL {run.get('accuracy_after', '')}", flush=True)
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
