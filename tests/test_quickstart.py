"""The main job end to end: warm-up SFT, accuracy before, SAPO training, accuracy after (about 1-2 minutes)."""

import json

import pytest


def test_quickstart_trains_the_tiny_model_to_clearly_higher_held_out_accuracy(tmp_path, monkeypatch):
    from thermorl.quickstart import quickstart

    monkeypatch.setenv("THERMORL_CACHE", str(tmp_path / "cache"))
    result = quickstart(["--output_dir", str(tmp_path / "run"), "--disable_tqdm", "true"])

    before, after = result["accuracy_before"], result["accuracy_after"]
    assert after["T=0"] >= before["T=0"] + 0.10, (before, after)
    assert after["T=1"] >= before["T=1"] + 0.08, (before, after)
    rewards = [reward for _, reward in result["reward_curve"]]
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10
    assert result["steps"] == 300
    saved = json.loads((tmp_path / "run" / "quickstart_result.json").read_text())
    assert saved["accuracy_after"] == pytest.approx(after)
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert (tmp_path / "run" / "trainer_state.json").exists()
