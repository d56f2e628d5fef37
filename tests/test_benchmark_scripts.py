"""The method benchmarks in benchmarks/ run end to end at a tiny size, and the VAS one resumes finished runs."""

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vas_benchmark_runs_on_the_quickstart_setting_and_resumes(tmp_path):
    vas = load_benchmark("vas_zero_variance")
    out = tmp_path / "vas"
    argv = ["--steps", "2", "--seeds", "0", "--arms", "uniform", "rollout", "--prompts-per-level", "8",
            "--eval-samples", "2", "--update-interval", "1", "--rollouts-per-prompt", "2", "--out", str(out)]
    assert vas.main(argv) == 0

    report = json.loads((out / "results.json").read_text())
    assert report["warm_task"] == vas.SETTINGS["quickstart"]["warm_task"]
    assert report["settings"]["steps"] == 2
    runs = {run["arm"]: run for run in report["runs"]}
    assert set(runs) == {"uniform", "rollout"}
    for run in runs.values():
        assert len(run["reward_curve"]) == 2
        assert len(run["final"]["pass_rate_by_level"]) == 2
    # The rollout arm re-scores all 16 prompts x 2 completions at steps 0 and 1 (update interval 1).
    assert runs["rollout"]["rescore_completions"] == 2 * 16 * 2

    # A second call with the same settings reuses the finished runs instead of training again.
    saved = {path.name: path.stat().st_mtime_ns for path in (out / "runs").glob("*.json")}
    assert sorted(saved) == ["rollout-0.json", "uniform-0.json"]
    assert vas.main(argv) == 0
    assert {path.name: path.stat().st_mtime_ns for path in (out / "runs").glob("*.json")} == saved
    assert json.loads((out / "results.json").read_text())["runs"] == report["runs"]

    # Other settings train again.
    assert vas.main([*argv[:-2], "--steps", "3", "--arms", "uniform", "--out", str(out)]) == 0
    rerun = json.loads((out / "results.json").read_text())["runs"]
    assert [len(run["reward_curve"]) for run in rerun] == [3]


def test_adpo_benchmark_reverses_the_asked_share_of_labels_and_runs_every_method(tmp_path):
    adpo = load_benchmark("adpo_noisy_preferences")
    pool = [{"prompt": f"{i}+0+0=", "answers": [str(i), "x", "y"], "correct": [1, 0, 0]} for i in range(10)]
    dpo, pairs, lists = adpo.noisy_datasets(pool, noise=0.4, seed=0, beta_r=0.5)
    reversed_prompts = [row["prompt"] for row in dpo if row["chosen"] in ("x", "y")]
    assert len(reversed_prompts) == 4
    for item, pair, listed in zip(pool, pairs, lists, strict=True):
        flipped = pair["prompt"] in reversed_prompts
        assert (pair["chosen"], pair["rejected"][0] in "xy") == (item["answers"][0], True)  # q flips, not the pair
        expected_q = 1 / (1 + 2.718281828459045 ** 2)  # sigmoid(-1 / beta_r) for a reversed pair
        assert abs(pair["preference_probability"] - (expected_q if flipped else 1 - expected_q)) < 1e-9
        assert listed["scores"] == ([0.0, 1.0, 1.0] if flipped else [1.0, 0.0, 0.0])

    out = tmp_path / "adpo"
    adpo.main(["--steps", "2", "--seeds", "0", "--noise", "0.2", "--prompts", "64", "--candidates", "4",
               "--batch-size", "4", "--out", str(out)])
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["task"] == adpo.SETTINGS["quickstart"][0]
    assert report["pool_prompts"] > 0
    assert sorted(run["method"] for run in report["runs"]) == ["adpo_list", "adpo_pair", "dpo"]
    assert {run["noise"] for run in report["runs"]} == {0.2}
    assert report["settings"]["prompts"] == 64
    assert out.with_suffix(".png").exists()


def test_ead_benchmark_trains_every_arm_from_the_quickstart_model(tmp_path):
    ead = load_benchmark("ead_sample_efficiency")
    out = tmp_path / "ead"
    ead.main(["--steps", "2", "--seeds", "0", "--arms", "fixed-1.0", "ead", "--eval-samples", "2", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["task"] == "arithmetic:digits=1,num_operands=3,ops=+"
    assert set(results["runs"]) == {"fixed-1.0", "ead"}
    for runs in results["runs"].values():
        assert [len(run["rewards"]) for run in runs] == [2]
    for arm, runs in results["runs"].items():  # one seed: the summary's mean is that run's value, sd 0
        cell = results["summary"][arm]["held_out T1.0 pass@1"]
        assert cell == {"mean": runs[0]["eval"]["held_out"]["1.0"]["pass@1"], "std": 0.0}
        assert results["summary"][arm]["train reward, last 10 steps"]["mean"] == sum(runs[0]["rewards"]) / 2
    assert (out / "ead_sample_efficiency.png").exists()


def test_testbed_failures_splits_every_sample_into_one_outcome():
    failures = load_benchmark("testbed_failures")
    result = failures.main(["--samples", "2", "--warmup_examples", "64", "--warmup_epochs", "1",
                            "--num_train_examples", "32", "--num_eval_examples", "16"])
    assert set(result) == {"held-out", "training"}
    for counts in result.values():
        assert set(counts) == set(failures.OUTCOMES)
        assert sum(counts.values()) == 16 * 2  # 16 prompts x 2 samples, each in exactly one outcome
