"""`thermorl bench ARMS.yaml`: compare training methods (arms) over seeds, honestly and resumably.

An arms file names a base recipe, overrides shared by every arm, the arms themselves (recipe overrides), the seeds
and how to evaluate:

    recipe: testbed                    # a built-in recipe name or a YAML path (relative to the arms file)
    overrides: {max_steps: 300}        # applied to every arm
    baseline: fixed-1.0                # the arm whose final accuracy the others must reach; or each arm's own:
                                       # {ead: fixed-1.0, sapo: [grpo, grpo-reuse]} (after the first, controls)
    seeds: [0, 1, 2]
    evaluation: {samples: 8, every: 50, batch_size: 256, temperatures: [0.6, 1.0, 1.2], last_checkpoints: 3}
    confirmatory:                      # declared before the runs: Holm runs over these rows only
      - {metric: pass@1 greedy, arm: ead, baseline: fixed-1.0}
    arms:
      fixed-1.0: {temperature: 1.0}
      ead: {temperature_schedule: {type: annealed_for_length, response_tokens: 20}}

Each (arm, seed) trains in its own subprocess with OMP_NUM_THREADS=1 (one core per run; `--jobs` runs several at
once, `--threads` gives each run more) and writes OUT/runs/ARM/seedS.json: the training reward per step, held-out pass@1 (greedy and T=1) every
`every` steps, and the final held-out pass@1, pass@k and worst@k (all k samples right) at T=1; with
`temperatures` (0 is greedy), also pass@1 at each of them and the test-time-scaling view across that grid (k samples
at each): the k samples spread over the temperatures vs the best single temperature's pass@k (at every budget up to
k), Pass@All, and, where the task's answers are canonical (Task.canonical_answers), early-exit voting's accuracy and
samples saved against voting on every sample (elsewhere these are "n/a", with the reason in the JSON). A run whose
JSON exists is skipped, so an interrupted bench resumes; one whose JSON was made with other settings is refused.
Each run JSON also holds the per-prompt outcomes (right or not, per decoding), its environment (library versions,
CPU, torch threads) and the SHA-256 of the start weights; with `last_checkpoints: N`, the last N evaluated
checkpoints are scored in full and each metric also as their mean. The aggregate (OUT/report.json, OUT/report.md,
OUT/bench.png) gives the start weights and environments in its header, each metric's mean and 95% interval over
seeds, pass@1 by evaluation temperature (arms trained at different temperatures compared at the same decoding), and
paired per-seed differences against the baseline with a prompt-level bootstrap interval: the `confirmatory` rows
(declared before the runs; fewer than 10 seeds makes a row exploratory) get sign-flip p-values, Holm-corrected over
them only, the other rows (`--compare` picks their metrics) none; a file without `confirmatory` keeps the legacy
table (p-values on every row, Holm across the table, labelled so). Also the curves against steps and rollouts, and
the steps each arm needs to reach the baseline's final T=1 pass@1. A number a run JSON lacks (one written before it
existed) is reported as missing.
Held-out prompts are the recipe's built-in task's held-out split: never in the SFT warm-up nor in RL. For choosing
settings, `evaluation: {split: validation, validation_examples: N}` (or `--split validation`) scores instead N
prompts carved out of the training ones, which RL then leaves out; the held-out prompts stay the same.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserArgumentParser, UserError
from ..recipe import parse_overrides
from .arms import SPLITS, check_seeds, check_arms_share_start, load_arms, run_plan, validation_examples, with_split
from .plot import plot
from .report import aggregate, comparable_metrics, markdown
from .run import start_scores, write_json
from .scheduler import pending_runs, run_bench


def bench_command(argv: list[str]) -> int:
    parser = UserArgumentParser(
        prog="thermorl bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --field value is a recipe override applied to every arm (e.g. --max_steps 20).",
    )
    parser.add_argument("arms", help="arms file (YAML), e.g. benchmarks/testbed_arms.yaml")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/bench-<arms file name>)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds instead of the arms file's")
    parser.add_argument("--arms", dest="only", nargs="+", default=None, help="run only these arms of the file")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of each run (default 1: one core per run); a model as large as SmolLM2 "
                             "runs faster on 2 threads with --jobs 1 than on 1 thread each with --jobs 2, and needs "
                             "several GB of memory per run")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="score on the held-out prompts (default) or on validation prompts carved out of the "
                             "training ones (RL leaves them out), to choose settings; instead of the arms file's "
                             "evaluation.split")
    parser.add_argument("--compare", nargs="+", default=None, metavar="METRIC",
                        help="metrics of the paired comparison with the baseline (default: pass@1 greedy and at "
                             "each evaluation temperature)")
    parser.add_argument("--report", action="store_true",
                        help="write the report from the runs finished so far (with their seeds) and run nothing")
    args, rest = parser.parse_known_args(argv)
    for flag, value in (("--jobs", args.jobs), ("--threads", args.threads)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    spec = load_arms(args.arms)
    if args.split is not None:
        evaluation = spec["evaluation"]
        if args.split == "held_out":
            evaluation = {key: value for key, value in evaluation.items() if key != "validation_examples"}
        spec["evaluation"] = with_split(evaluation, args.split, "--split: evaluation")
    if args.compare is not None:
        unknown = [metric for metric in args.compare if metric not in comparable_metrics(spec["evaluation"])]
        if unknown:
            raise UserError(f"--compare: {unknown} are not metrics of this bench; choose from "
                            f"{comparable_metrics(spec['evaluation'])}")
    if args.seeds is not None:
        spec["seeds"] = check_seeds(args.seeds, "--seeds")
    if args.only is not None:
        unknown = [arm for arm in args.only if arm not in spec["arms"]]
        if unknown:
            raise UserError(f"--arms: {unknown} not in the arms file, whose arms are {list(spec['arms'])}")
        spec["arms"] = {arm: spec["arms"][arm] for arm in args.only}
    extra = parse_overrides(rest)
    check_arms_share_start(spec, extra)
    out = Path(args.out or f"outputs/bench-{Path(args.arms).stem}")
    if args.report:
        missing = pending_runs(spec, out, extra)
        if len(missing) == len(spec["arms"]) * len(spec["seeds"]):
            raise UserError(f"--report: no finished run in {out} for these arms and seeds")
        print(f"bench: report from the finished runs in {out}; not finished: "
              + (", ".join(f"{arm} seed {seed}" for arm, seed, _, _ in missing) or "none"), flush=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        print(f"bench: warm-up and start evaluation (cached after the first run) -> {out}", flush=True)
    start, start_weights = start_scores(spec, extra, out, cached_only=args.report, threads=args.threads)
    failed = [] if args.report else run_bench(spec, out, extra, args.jobs, args.threads)
    report = aggregate(spec, out, start, args.compare, start_weights)
    report["held_out_prompts"] = (validation_examples(spec["evaluation"])
                                  or run_plan(spec, next(iter(spec["arms"])), 0, extra, out)["recipe"].get("num_eval_examples"))
    write_json(out / "report.json", report)
    table = markdown(report)
    (out / "report.md").write_text(table + "\n")
    if report["arms"]:
        plot(report, out / "bench.png")
    print(table)
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}" + (f", {out / 'bench.png'}" if report["arms"] else ""))
    if failed:
        print(f"bench: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
