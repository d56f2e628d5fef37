"""The vLLM route's pure parts, without vLLM (the engine itself is tested in the vLLM lane, tests_vllm/): schedule
specs carried in request arguments, the temperature tables and row scaling the processors share, the refusals, and
the server path's request splitting for portfolios."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from thermorl.rollouts import build_schedule
from thermorl.rollouts.vllm_schedule import (
    TemperatureTables,
    requested_schedule,
    scale_rows,
    schedule_extra_args,
    schedule_spec,
)
from thermorl.trainers import ThermoGRPOConfig
from thermorl.trainers.annealed_vllm import check_server_processor, check_vllm_settings, served_requests

SPECS = [
    0.7,
    {"type": "linear", "start": 1.5, "end": 0.2, "length": 9},
    {"type": "annealed", "tau_max": 1.3, "tau_min": 0.2, "warmup_tokens": 2, "d0": 3.0, "alpha": 1.0},
    {"type": "reverse_annealed", "tau_min": 0.4},
]


@pytest.mark.parametrize("spec", SPECS)
def test_extra_args_carry_the_schedule_as_flat_values(spec):
    schedule = build_schedule(spec)
    extra = schedule_extra_args(schedule, 7)
    assert all(isinstance(value, (str, int)) for value in extra.values())  # vllm_xargs takes flat values only
    assert build_schedule(json.loads(extra["thermorl_schedule"])) == schedule
    params = SimpleNamespace(extra_args=extra, temperature=1.0, top_k=-1, top_p=1.0, min_p=0.0,
                             repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0)
    assert requested_schedule(params) == (extra["thermorl_schedule"], 7)
    assert schedule_spec(schedule)["type"] == (spec["type"] if isinstance(spec, dict) else "constant")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"top_k": 20}, "top_k=20"),
        ({"top_p": 0.9}, "top_p=0.9"),
        ({"min_p": 0.05}, "min_p=0.05"),
        ({"repetition_penalty": 1.1}, "repetition_penalty=1.1"),
        ({"temperature": 0.7}, "temperature=0.7"),
        ({"extra_args": {"thermorl_schedule": {"type": "linear"}}}, "must be a JSON string"),
        ({"extra_args": {"thermorl_schedule": '{"type": "cosine"}'}}, "unknown temperature schedule type"),
        ({"extra_args": {"thermorl_schedule": "0.5", "thermorl_step": -1}}, "thermorl_step must be an int >= 0"),
    ],
)
def test_requests_that_would_not_sample_the_schedule_are_refused(change, message):
    params = SimpleNamespace(extra_args=schedule_extra_args(build_schedule(0.5), 0), temperature=1.0, top_k=0,
                             top_p=1.0, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0)
    params.__dict__.update(change)
    with pytest.raises(ValueError, match=message):
        requested_schedule(params)


def test_requests_without_a_schedule_are_not_taken():
    assert requested_schedule(SimpleNamespace(extra_args=None)) is None
    assert requested_schedule(SimpleNamespace(extra_args={"other": 1})) is None


def test_tables_and_row_scaling_match_the_schedules():
    linear = schedule_extra_args(build_schedule({"type": "linear", "start": 2.0, "end": 0.0, "length": 4}), 0)
    annealed = schedule_extra_args(build_schedule(SPECS[2]), 3)
    keys = [(e["thermorl_schedule"], e["thermorl_step"]) for e in (linear, annealed)]
    tables = TemperatureTables(max_len=16, device="cpu")
    rows = tables.rows([keys[1], keys[0], keys[1]])
    assert rows[0] == rows[2] != rows[1] and tables.any_greedy
    assert torch.equal(tables.values[rows[1]], build_schedule(json.loads(keys[0][0])).temperatures(torch.arange(16), 0))
    # A new step drops the keys no request uses any more.
    later = (keys[1][0], 4)
    tables.rows([later])
    assert list(tables.index) == [later]

    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    scaled = logits.clone()
    scale_rows(scaled, torch.tensor([0, 2]), torch.tensor([0.5, 0.0]), any_greedy=True)
    whole = logits.clone()
    scale_rows(whole, None, torch.tensor([0.5, 2.0, 4.0]), any_greedy=False)
    assert torch.equal(whole, logits / torch.tensor([0.5, 2.0, 4.0])[:, None])
    assert torch.equal(scaled[0], logits[0] / 0.5) and torch.equal(scaled[1], logits[1])
    assert scaled[2].argmax() == logits[2].argmax() and torch.isinf(scaled[2]).sum() == 4


class FakeClient:
    """TRL's VLLMClient.generate contract: prompt-major choices; each completion records the xargs it was sampled
    with, and the log-prob a server with the processor returns for a temperature-0 request."""

    def __init__(self, processor_registered=True):
        self.calls = []
        self.registered = processor_registered

    def generate(self, prompts, n=1, generation_kwargs=None, **kwargs):
        xargs = (generation_kwargs or {}).get("vllm_xargs", {})
        self.calls.append((len(prompts), n, xargs))
        spec = json.loads(xargs.get("thermorl_schedule", "1"))
        tau = spec["value"] if self.registered and isinstance(spec, dict) and spec["type"] == "constant" else 1.0
        logprob = {0.0: 0.0, 1e4: -4.6}.get(tau, -1.3)
        choices = [(p, j) for p in range(len(prompts)) for j in range(n)]
        return {
            "prompt_ids": [list(p) for p in prompts],
            "completion_ids": [[p, j, xargs.get("thermorl_schedule", "")] for p, j in choices],
            "logprobs": [[[logprob]] for _ in choices],
            "logprob_token_ids": None,
        }


def test_server_portfolio_requests_are_split_per_schedule_and_put_back_in_group_order():
    portfolio = [build_schedule(0.4), build_schedule(1.2), build_schedule(0.8)]
    row_args = [schedule_extra_args(portfolio[m % 3], 5) for m in range(4)]
    client = FakeClient()
    with served_requests(client, row_args, num_generations=4, checked=[False]):
        output = client.generate([[1, 2], [3]], n=4, generation_kwargs={"seed": 1})
    assert "generate" not in vars(client)
    probes, calls = client.calls[:2], client.calls[2:]
    assert [probe[:2] for probe in probes] == [(1, 1), (1, 1)]
    assert [(c[0], c[1]) for c in calls] == [(2, 2), (2, 1), (2, 1)]  # members {0, 3}, {1}, {2}
    schedules = [row[2] for row in output["completion_ids"]]
    expected = [row_args[m]["thermorl_schedule"] for _ in range(2) for m in range(4)]
    assert schedules == expected
    assert [row[0] for row in output["completion_ids"]] == [0] * 4 + [1] * 4
    assert output["logprob_token_ids"] is None and len(output["logprobs"]) == 8


def test_a_server_without_the_processor_is_refused_before_sampling():
    client = FakeClient(processor_registered=False)
    with pytest.raises(ValueError, match="--logits-processors thermorl.rollouts.vllm_temperature"):
        check_server_processor(client.generate, [1, 2])


@pytest.mark.parametrize("temperature_one_logprob", [-1e-7, -2.0])
def test_the_probe_catches_fixed_temperature_sampling_on_peaked_and_flat_models(temperature_one_logprob):
    def generate(prompts, n, max_tokens, logprobs, generation_kwargs):  # ignores the schedule, like a bare server
        return {"logprobs": [[[temperature_one_logprob]]]}

    with pytest.raises(ValueError, match="probe log-probs"):
        check_server_processor(generate, [1])


def test_use_vllm_with_a_schedule_checks_version_and_sampling(fast_grpo_kwargs, monkeypatch):
    from packaging.version import Version

    from thermorl.trainers import annealed_vllm

    config = ThermoGRPOConfig(**fast_grpo_kwargs, temperature_schedule=0.7, use_vllm=True)
    monkeypatch.setattr(annealed_vllm, "version", lambda name: (_ for _ in ()).throw(annealed_vllm.PackageNotFoundError))
    with pytest.raises(ValueError, match=r"needs vLLM: pip install 'thermorl\[vllm\]'"):
        check_vllm_settings(config)
    monkeypatch.setattr(annealed_vllm, "installed_vllm_version", lambda: Version("0.31.0"))
    with pytest.raises(ValueError, match=r"support vLLM >=0.32.0,<0.34.0 .*found vLLM 0.31.0"):
        check_vllm_settings(config)
    monkeypatch.setattr(annealed_vllm, "installed_vllm_version", lambda: Version("0.32.0+cpu"))
    check_vllm_settings(config)
    config.generation_kwargs = {"top_p": 0.9}
    with pytest.raises(ValueError, match="top_p=0.9.*check generation_kwargs"):
        check_vllm_settings(config)
