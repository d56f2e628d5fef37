"""TRL's own GRPOTrainer tests against ThermoGRPOTrainer, offline.

    python scripts/trl_suite.py [TRL_TESTS_DIR] [--out DIR] [--jobs N] [-k EXPR]

TRL_TESTS_DIR (default ../shared/trl-tests/tests beside the checkout) is the tests/ folder of a TRL checkout, with
the offline stand-ins beside it in standins/ (build_standins.py, conftest.py, upstream_scripts/): TRL's PyPI packages
ship no tests and thermorl does not copy TRL's code, so both are read from there. Where the folder is absent (a clone
without it) the script prints one line and exits 0.

The stand-ins are copied into --out and built there: tiny random models of the architectures TRL's tests load, in
the hub-cache layout with their hub ids, and the `zen` datasets made by TRL's generator script. Their conftest.py
redirects the tests to them and, with THERMO_SWAP=1, swaps the test module's `GRPOTrainer` / `GRPOConfig` for
`ThermoGRPOTrainer` / `ThermoGRPOConfig`. TRL's test_grpo_trainer.py runs with thermorl, split over --jobs pytest
processes; then plain TRL runs the tests that did not pass with thermorl (every test, if thermorl collected none).
A test that passes with thermorl needs no plain run, so the comparison is complete at about half the cost of running
both in full. The script prints every test that passes on plain TRL and not with thermorl, with its error's last
line; KNOWN_EXCEPTIONS lists the ones expected, each with its reason. Exit code 1 when any other test differs, or
when no test passed in either run (nothing was compared).

This module is also the pytest plugin every run loads (`-p trl_suite`): the two hooks below.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ROOT.parent / "shared" / "trl-tests" / "tests"
TEST_FILE = "test_grpo_trainer.py"

# Tests that pass on plain TRL and are expected to fail with thermorl, each with the reason (test id -> reason).
KNOWN_EXCEPTIONS: dict[str, str] = {
    "TestGRPOTrainer::test_warning_raised_all_rewards_none": (
        "an example that no reward function scored (all return None) stops training with one line naming the "
        "function and the example (trainers/reward_guard.py), where TRL warns and trains on a reward of 0"),
    "TestGRPOTrainer::test_warning_raised_sequence_level_with_token_summed_loss[cispo]": (
        "importance_sampling_level='sequence' with loss_type='cispo' is refused (UserError: no registry loss is "
        "that combination), where TRL warns and trains it"),
}

# trl.import_utils helpers the TRL tests' testing_utils.py imports that the installed TRL may lack (helper -> the
# package it checks for).
MISSING_TRL_HELPERS = {"is_joblib_available": "joblib"}


def pytest_configure(config) -> None:
    """Plugin hook: the TRL tests may be newer or older than the installed TRL; give trl.import_utils the
    availability helpers their testing_utils.py imports, so the module imports instead of failing collection."""
    from trl import import_utils

    for helper, package in MISSING_TRL_HELPERS.items():
        if not hasattr(import_utils, helper):
            setattr(import_utils, helper, lambda package=package: importlib.util.find_spec(package) is not None)


def pytest_collection_modifyitems(config, items) -> None:
    """Plugin hook: TRL_SUITE_SHARD="i/n" keeps every n-th test from the i-th, so n processes share the file (the
    slow tests are spread, as neighbouring ones are alike)."""
    if "TRL_SUITE_SHARD" not in os.environ:
        return
    index, count = map(int, os.environ["TRL_SUITE_SHARD"].split("/"))
    config.hook.pytest_deselected(items=[item for position, item in enumerate(items) if position % count != index])
    items[:] = items[index::count]


def build_standins(standins: Path, tests: Path, root: Path) -> None:
    """`root` becomes the stand-ins' folder: their files copied (writable), built in place, the tests linked in."""
    shutil.copytree(standins, root, ignore=shutil.ignore_patterns("__pycache__", "hf_home"))
    for path in (root, *root.rglob("*")):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    build = subprocess.run([sys.executable, "build_standins.py"], cwd=root, env={**os.environ, "TRLTESTS": str(root)},
                           capture_output=True, text=True)
    if build.returncode:
        raise SystemExit(f"trl_suite: building the stand-ins failed:\n{build.stdout}{build.stderr}")
    (root / "tests").symlink_to(tests.resolve(), target_is_directory=True)


def start_pytest(root: Path, out: Path, name: str, swap: bool, tests: list[str], select: str | None,
                 shard: str) -> subprocess.Popen:
    """One pytest process over TRL's tests (node ids under root) with plain TRL or, with `swap`, thermorl; its output
    goes to out/<name>.log, its report to out/<name>.xml."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "trl_suite", "-p", "no:cacheprovider", "-o", "addopts=",
               f"--basetemp={out / name / 'tmp'}", f"--junitxml={out / f'{name}.xml'}", *tests]
    if select:
        command += ["-k", select]
    env = {**os.environ, "THERMO_SWAP": "1" if swap else "0", "TRL_SUITE_SHARD": shard,
           "PYTHONPATH": str(Path(__file__).parent), "HF_DATASETS_CACHE": str(out / name / "datasets_cache"),
           "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "PYTHONDONTWRITEBYTECODE": "1"}
    # The processes share the machine's cores; each one's own threads would only contend.
    env.setdefault("OMP_NUM_THREADS", "1")
    (out / name).mkdir(parents=True)
    with open(out / f"{name}.log", "w") as log:
        return subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def run_sharded(root: Path, out: Path, name: str, swap: bool, tests: list[str], select: str | None,
                jobs: int) -> dict[str, str]:
    """The tests split over `jobs` concurrent pytest processes (out/<name>-<i>.log), their outcomes merged."""
    shards = [f"{name}-{index}" for index in range(jobs)]
    runs = [start_pytest(root, out, shard, swap, tests, select, f"{index}/{jobs}")
            for index, shard in enumerate(shards)]
    for run in runs:
        run.wait()
    return {test: outcome for shard in shards for test, outcome in read_report(out / f"{shard}.xml").items()}


def read_report(report: Path) -> dict[str, str]:
    """{test id: "passed" | "failed" | "skipped"} (and each failure's last message line, after a tab)."""
    outcomes = {}
    if not report.is_file():
        return outcomes
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        test = f"{case.get('classname', '').rpartition('.')[2]}::{case.get('name')}"
        failure = case.find("failure") if case.find("failure") is not None else case.find("error")
        if failure is not None:
            message = (failure.get("message") or failure.text or "").strip().splitlines()
            outcomes[test] = "failed\t" + (message[-1] if message else "")
        elif case.find("skipped") is not None:
            outcomes[test] = "skipped"
        else:
            outcomes[test] = "passed"
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tests", type=Path, nargs="?", default=DEFAULT_TESTS,
                        help="a TRL checkout's tests/ folder, with standins/ beside it")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "trl_suite")
    parser.add_argument("--jobs", type=int, default=2, help="pytest processes per run (one core each)")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression, to run some tests only")
    args = parser.parse_args(argv)
    if not args.tests.exists():
        print(f"trl_suite: {args.tests} absent: TRL's tests are not beside this checkout, nothing to compare")
        return 0
    standins = args.tests.parent / "standins"
    for needed in (args.tests / TEST_FILE, standins / "build_standins.py", standins / "conftest.py"):
        if not needed.is_file():
            print(f"trl_suite: {needed} not found: pass a TRL checkout's tests/ folder with standins/ beside it",
                  file=sys.stderr)
            return 2
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    root = out / "standins"
    build_standins(standins, args.tests, root)
    print(f"trl_suite: TRL's GRPOTrainer tests with thermorl ({args.jobs} processes) ...", flush=True)
    ours = run_sharded(root, out, "thermorl", True, [f"tests/{TEST_FILE}"], args.select, args.jobs)
    # Only a test that did not pass with thermorl can differ; if thermorl collected none, plain TRL runs the file.
    rerun = ([f"tests/{TEST_FILE}::{test}" for test, outcome in ours.items() if outcome != "passed"] if ours
             else [f"tests/{TEST_FILE}"])
    passed = sum(outcome == "passed" for outcome in ours.values())
    print(f"trl_suite: plain TRL on the {len(ours) - passed} that did not pass ...", flush=True)
    plain = run_sharded(root, out, "trl", False, rerun, args.select, args.jobs) if rerun else {}
    passing = [test for test, outcome in plain.items() if outcome == "passed"]
    differ = {test: ours.get(test, "missing") for test in passing}
    (out / "summary.json").write_text(json.dumps({"plain": plain, "thermorl": ours, "differ": differ}, indent=1))
    if not passed and not passing:
        print(f"trl_suite: no test passed with thermorl or plain TRL, nothing was compared: see {out}/*.log")
        return 1
    print(f"trl_suite: {passed} of {len(ours)} tests pass with thermorl; of the {len(plain)} others {len(differ)} "
          "pass on plain TRL:")
    unexpected = 0
    for test, outcome in sorted(differ.items()):
        reason = KNOWN_EXCEPTIONS.get(test)
        unexpected += reason is None
        print(f"  {test}: {outcome.replace(chr(9), ': ')}" + (f"  [known: {reason}]" if reason else ""))
    if unexpected:
        print(f"trl_suite: {unexpected} unexpected; the full output is in {out}/thermorl-*.log")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
