"""The study's committed results (benchmarks/results/*/) hold what the docs promise: every run a report aggregates is
committed beside it as a per-seed JSON, and the report's numbers recompute from those JSONs. A results folder whose
runs were left out (an earlier one was: the repository's .gitignore drops `runs/` unless the folder keeps it) fails
here rather than in a reader's hands."""

import json
import statistics
from pathlib import Path

import pytest

from thermorl.bench.report import run_metrics

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
REPORTS = sorted(path.parent.name for path in RESULTS.glob("*/report.json"))


def runs_of(folder: str) -> tuple[dict, dict]:
    report = json.loads((RESULTS / folder / "report.json").read_text())
    runs = {}
    for arm, aggregated in report["arms"].items():
        for seed in aggregated["seeds"]:
            path = RESULTS / folder / "runs" / arm / f"seed{seed}.json"
            assert path.is_file(), f"{folder}: the report aggregates {arm} seed {seed}, whose run JSON is not there"
            runs[arm, seed] = run_metrics(json.loads(path.read_text()))
    return report, runs


def test_there_are_results_to_check():
    assert {"study_tuning", "study_heldout", "study_annealing", "regime_diversity", "regime_staleness",
            "regime_staleness_tuning", "ead_quickstart_k64"} <= set(REPORTS)


@pytest.mark.parametrize("folder", REPORTS)
def test_results_folder_keeps_its_runs_under_version_control(folder):
    rules = (RESULTS / folder / ".gitignore").read_text().split()
    assert "!runs/" in rules and "runs/*/seed*/" in rules  # the JSONs kept, each run's model folder not


@pytest.mark.parametrize("folder", REPORTS)
def test_report_recomputes_from_the_committed_runs(folder):
    report, runs = runs_of(folder)
    for arm, aggregated in report["arms"].items():
        for metric, summary in aggregated["final"].items():
            values = [runs[arm, seed][metric] for seed in aggregated["seeds"] if metric in runs[arm, seed]]
            if values:
                assert summary["mean"] == pytest.approx(statistics.fmean(values), abs=1e-9), (arm, metric)
    for row in report["paired"]["comparisons"]:
        comparison = row["comparison"]
        baseline = row.get("baseline", report["paired"]["baseline"])  # reports from before per-arm baselines
        differences = [runs[row["arm"], seed][row["metric"]] - runs[baseline, seed][row["metric"]]
                       for seed in comparison["seeds"]]
        assert comparison["mean difference"] == pytest.approx(statistics.fmean(differences), abs=1e-9), row
        assert (comparison["wins"], comparison["losses"]) == (sum(d > 0 for d in differences),
                                                              sum(d < 0 for d in differences)), row
