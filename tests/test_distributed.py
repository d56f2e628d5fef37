"""Two processes on the CPU (gloo) under DeepSpeed ZeRO-2 and ZeRO-3, launched for real with `accelerate launch`
and launch/cpu_zero*.yaml: ThermoGRPOTrainer (SAPO; EAD and VAS where the config has their fields) trains, and the
ranks end with identical weights after drawing identical prompt indices.

The first DeepSpeed launch on a machine JIT-compiles DeepSpeed's shared-memory comm op (g++ and ninja; 2-3 minutes
on 2 busy cores, cached in ~/.cache/torch_extensions), so the first launch takes longer than later ones.
"""

import dataclasses
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from thermorl.trainers import ThermoGRPOConfig

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("distributed_driver.py")
MAX_STEPS = 2

RECIPE = {
    "dataset": "arithmetic",
    "num_train_examples": 64,
    "num_eval_examples": 8,
    "reward_funcs": [f"{DRIVER}:digit_share_reward"],
    "policy_loss": "sapo",
    "use_cpu": True,
    "bf16": False,
    "gradient_checkpointing": False,
    "learning_rate": 1e-2,
    "max_steps": MAX_STEPS,
    "per_device_train_batch_size": 4,
    "num_generations": 4,
    "max_completion_length": 4,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": [],
    "disable_tqdm": True,
    "seed": 0,
}

# thermorl features switched on in the ZeRO-3 run, each once ThermoGRPOConfig has its fields, with a metric the
# feature logs. EAD's schedule is rescaled to 4-token completions (as recipes/ead_sapo.yaml).
FEATURES = {
    "ead": (
        {"temperature_schedule": {"type": "annealed", "tau_max": 1.2, "tau_min": 0.1, "warmup_tokens": 0, "d0": 2.0,
                                  "alpha": 0.1, "d_max": 8.0, "horizon_scale": 1.0}},
        "ead/temperature_mean",
    ),
    "vas": ({"vas_mode": "online"}, "vas/"),
}
CONFIG_FIELDS = {f.name for f in dataclasses.fields(ThermoGRPOConfig)}
PRESENT = {name: spec for name, spec in FEATURES.items() if set(spec[0]) <= CONFIG_FIELDS}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(config: str, tmp_path: Path, model_dir: str, **overrides) -> list[dict]:
    recipe = {**RECIPE, "model_name_or_path": model_dir, "output_dir": str(tmp_path / "run"), **overrides}
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch" / config),
        "--main_process_port", str(free_port()), str(DRIVER), str(recipe_path), str(tmp_path),
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, f"launch failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]


def check_ranks_agree_and_trained(ranks: list[dict], stage: int, model_dir: str) -> None:
    first, second = ranks
    assert first["world_size"] == second["world_size"] == 2
    assert first["zero_stage"] == second["zero_stage"] == stage
    assert len(first["losses"]) == MAX_STEPS and all(math.isfinite(loss) for loss in first["losses"])

    # ZeRO-3 keeps about half the elements on each rank; below it, every rank holds them all.
    total = sum(p.numel() for p in first["params"].values())
    for rank in ranks:
        assert rank["local_numel"] <= 0.6 * total if stage == 3 else rank["local_numel"] == total

    start = load_file(Path(model_dir) / "model.safetensors")
    moved = [name for name, p in first["params"].items() if not torch.equal(p, start[name])]
    assert len(moved) >= 0.8 * len(start), f"only {len(moved)} of {len(start)} tensors moved"
    different = [name for name in first["params"] if not torch.equal(first["params"][name], second["params"][name])]
    assert not different, f"ranks disagree on {different[:5]}"

    assert first["drawn"] and first["drawn"] == second["drawn"]


ZERO3_FEATURES = "+".join(["sapo", *PRESENT])


@pytest.mark.parametrize(
    "config, stage, with_features",
    [("cpu_zero2.yaml", 2, False), ("cpu_zero3.yaml", 3, True)],
    ids=["zero2-sapo", f"zero3-{ZERO3_FEATURES}"],
)
def test_two_processes_train_in_step(config, stage, with_features, tmp_path, tiny_model_dir):
    """ZeRO-2 runs SAPO alone; ZeRO-3, the stage that shards the weights generation and EAD's and VAS's hooks see,
    runs SAPO with every thermorl feature ThermoGRPOConfig has (two launches keep the file within minutes)."""
    features = {name: spec for name, spec in PRESENT.items() if with_features}
    overrides = {key: value for settings, _ in features.values() for key, value in settings.items()}
    ranks = launch(config, tmp_path, tiny_model_dir, save_strategy="steps", save_steps=MAX_STEPS, **overrides)
    check_ranks_agree_and_trained(ranks, stage, tiny_model_dir)
    # The atomic checkpoint holds both ranks' DeepSpeed shards and was renamed into place whole.
    checkpoint = tmp_path / "run" / f"checkpoint-{MAX_STEPS}"
    shards = sorted(p.name for p in (checkpoint / f"global_step{MAX_STEPS}").glob("*optim_states.pt"))
    assert len(shards) == 2 and (checkpoint / "trainer_state.json").is_file()
    assert [p.name for p in (tmp_path / "run").iterdir() if "checkpoint" in p.name] == [checkpoint.name]
    assert "sapo/gate_weight_mean" in ranks[0]["metrics"]
    for name, (_, metric) in features.items():
        assert any(key.startswith(metric) for key in ranks[0]["metrics"]), f"{name} logged no {metric}"


# ---- launch configs and the settings thermorl refuses ----------------------------------------------------------

# name -> (distributed_type, num_processes, zero_stage, mixed_precision, offload devices)
LAUNCH_CONFIGS = {
    "single.yaml": ("NO", 1, None, "bf16", None),
    "ddp.yaml": ("MULTI_GPU", 8, None, "bf16", None),
    "zero2.yaml": ("DEEPSPEED", 8, 2, "bf16", ("none", "none")),
    "zero3.yaml": ("DEEPSPEED", 8, 3, "bf16", ("none", "none")),
    "zero3_offload.yaml": ("DEEPSPEED", 8, 3, "bf16", ("cpu", "cpu")),
    "multinode.yaml": ("DEEPSPEED", 16, 3, "bf16", ("none", "none")),
    "cpu_zero2.yaml": ("DEEPSPEED", 2, 2, "no", ("none", "none")),
    "cpu_zero3.yaml": ("DEEPSPEED", 2, 3, "no", ("none", "none")),
}


def test_every_launch_config_loads_in_accelerate_and_says_what_it_is():
    from accelerate.commands.config.config_args import ClusterConfig

    assert sorted(p.name for p in (REPO / "launch").glob("*.yaml")) == sorted(LAUNCH_CONFIGS)
    for name, (kind, processes, stage, precision, offload) in LAUNCH_CONFIGS.items():
        path = REPO / "launch" / name
        assert path.read_text().startswith("# "), f"{name} lacks its one-line description"
        config = ClusterConfig.from_yaml_file(path)  # rejects keys accelerate does not know
        described = (config.distributed_type.value, config.num_processes, config.mixed_precision)
        assert described == (kind, processes, precision), name
        ds = config.deepspeed_config
        assert ds.get("zero_stage") == stage, name
        if offload is not None:
            assert (ds["offload_optimizer_device"], ds["offload_param_device"]) == offload, name
        assert config.use_cpu == name.startswith("cpu_"), name
    assert ClusterConfig.from_yaml_file(REPO / "launch" / "multinode.yaml").num_machines == 2


def launch_environment(config: str) -> dict[str, str]:
    """The ACCELERATE_* variables `accelerate launch --config_file launch/CONFIG` gives its DeepSpeed workers."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(REPO / "launch" / config), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    return {name: value for name, value in env.items() if name.startswith("ACCELERATE_")}


def settings_under(monkeypatch, tmp_path, env: dict[str, str], model=None, **config):
    """(ModelConfig, ThermoGRPOConfig) built inside a launch's environment, on the CPU."""
    from trl import ModelConfig

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    values = {"output_dir": str(tmp_path / "run"), "use_cpu": True, "bf16": False, "report_to": [], **config}
    return ModelConfig(**(model or {})), ThermoGRPOConfig(**values)


@pytest.mark.parametrize("config", ["cpu_zero2.yaml", "cpu_zero3.yaml"])
def test_cpu_launch_configs_pass_the_checks(config, monkeypatch, tmp_path):
    from thermorl.launch_checks import check_launch, launch_settings

    model_args, args = settings_under(monkeypatch, tmp_path, launch_environment(config))
    check_launch(model_args, args)
    assert launch_settings(model_args, args).zero_stage == int(config[-6])


def test_a_gpu_launch_config_on_the_cpu_names_mixed_precision(monkeypatch, tmp_path):
    from thermorl.launch_checks import check_launch

    model_args, args = settings_under(monkeypatch, tmp_path, launch_environment("zero2.yaml"))
    with pytest.raises(ValueError, match=r"accelerate config sets `mixed_precision: bf16`.*launch/cpu_zero2.yaml"):
        check_launch(model_args, args)


def test_offload_on_the_cpu_names_the_offload_setting(monkeypatch, tmp_path):
    from thermorl.launch_checks import check_launch

    env = {**launch_environment("zero3_offload.yaml"), "ACCELERATE_MIXED_PRECISION": "no"}
    model_args, args = settings_under(monkeypatch, tmp_path, env)
    message = r"`offload_optimizer_device: cpu`.*already on the CPU.*`offload_optimizer_device: none`"
    with pytest.raises(ValueError, match=message):
        check_launch(model_args, args)


def test_bf16_recipe_on_the_cpu_stops_train_before_anything_is_built(tmp_path):
    from thermorl.errors import UserError
    from thermorl.recipe import load_recipe
    from thermorl.train import train

    values = {**RECIPE, "model_name_or_path": str(tmp_path / "no-such-model"), "output_dir": str(tmp_path / "run"),
              "bf16": True}
    with pytest.raises(UserError, match=r"this run is on the CPU.*`bf16: true` is bf16 mixed precision"):
        train(*load_recipe(values))


def test_qlora_under_zero3_needs_matching_quant_storage(monkeypatch, tmp_path):
    from thermorl.launch_checks import check_launch

    env = launch_environment("cpu_zero3.yaml")
    qlora = {"use_peft": True, "load_in_4bit": True, "dtype": "bfloat16"}
    model_args, args = settings_under(monkeypatch, tmp_path, env, model=qlora)
    with pytest.raises(ValueError, match=r"`bnb_4bit_quant_storage` equal to the model `dtype`.*None.*'bfloat16'"):
        check_launch(model_args, args)
    model_args, args = settings_under(monkeypatch, tmp_path, env, model={**qlora, "bnb_4bit_quant_storage": "bfloat16"})
    check_launch(model_args, args)


def test_zero3_refuses_what_it_cannot_honour_on_a_gpu():
    from thermorl.launch_checks import LaunchSettings, check_deepspeed, check_precision

    zero3 = dict(device_type="cuda", zero_stage=3)
    with pytest.raises(ValueError, match=r"`ds3_gather_for_generation: false` with `use_vllm: true`"):
        check_deepspeed(LaunchSettings(**zero3, use_vllm=True, ds3_gather_for_generation=False))
    check_deepspeed(LaunchSettings(**zero3, use_vllm=True, ds3_gather_for_generation=True))
    offload = {"zero_optimization": {"offload_param": {"device": "cpu"}}}
    check_deepspeed(LaunchSettings(**zero3, deepspeed_config=offload))
    check_precision(LaunchSettings(**zero3, bf16=True, deepspeed_config={"bf16": {"enabled": True}}))
    with pytest.raises(ValueError, match=r"DeepSpeed config sets `bf16.enabled: true`, but this run is on the CPU"):
        check_precision(LaunchSettings(device_type="cpu", zero_stage=2, deepspeed_config={"bf16": {"enabled": True}}))


@pytest.mark.parametrize(
    "project, message",
    [("team/project", r"contains '/'"), ("runs:v2", r"contains ':'"), ("50%#", r"contains '#', '%'"),
     ("x" * 129, r"129 characters long; W&B allows at most 128"), ("  ", "is empty")],
)
def test_invalid_wandb_project_names_are_refused(project, message, monkeypatch, tmp_path):
    from thermorl.launch_checks import check_launch

    model_args, args = settings_under(monkeypatch, tmp_path, {"WANDB_PROJECT": project}, report_to=["wandb"])
    with pytest.raises(ValueError, match=message):
        check_launch(model_args, args)


def test_valid_wandb_project_from_the_recipe_passes(monkeypatch, tmp_path):
    from thermorl.launch_checks import check_launch

    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    model_args, args = settings_under(monkeypatch, tmp_path, {}, report_to=["wandb"], project="thermorl-gsm8k_v1.2")
    check_launch(model_args, args)
    model_args, args = settings_under(monkeypatch, tmp_path, {}, report_to=["wandb"], project="gsm8k/sapo")
    with pytest.raises(ValueError, match=r"'gsm8k/sapo' .*contains '/'"):
        check_launch(model_args, args)
