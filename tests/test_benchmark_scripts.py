"""The benchmark scripts in benchmarks/ run end to end at a tiny size (the method comparisons that `thermorl bench`
runs are arms files, tested in tests/test_testbed.py)."""

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_testbed_failures_splits_every_sample_into_one_outcome():
    failures = load_benchmark("testbed_failures")
    result = failures.main(["--samples", "2", "--warmup_examples", "64", "--warmup_epochs", "1",
                            "--num_train_examples", "32", "--num_eval_examples", "16"])
    assert set(result) == {"held-out", "training"}
    for counts in result.values():
        assert set(counts) == set(failures.OUTCOMES)
        assert sum(counts.values()) == 16 * 2  # 16 prompts x 2 samples, each in exactly one outcome
