"""Run by tests/test_distributed.py under `accelerate launch`: train a recipe, then dump what this rank ended with.

usage: accelerate launch --config_file launch/cpu_zero2.yaml tests/distributed_driver.py RECIPE OUT_DIR

Each rank writes OUT_DIR/rank{i}.pt: the full (ZeRO-3: gathered) parameters after training, every prompt index
its sampler yielded, and the logged losses. The test compares the ranks with each other and with the start.
"""

import sys
from pathlib import Path

import torch


def digit_share_reward(completions, **_):
    """A reward a random model already varies on (the share of digits), so advantages and gradients are non-zero."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


class RecordingSampler(torch.utils.data.Sampler):
    """Passes the trainer's sampler through, keeping every index it yields."""

    def __init__(self, sampler, drawn: list[int]):
        self.sampler, self.drawn = sampler, drawn

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for index in self.sampler:
            self.drawn.append(int(index))
            yield index


def local_numel(trainer) -> int:
    """Parameter elements this rank holds: its ZeRO-3 shard (`ds_tensor`) or, below ZeRO-3, every element."""
    params = trainer.accelerator.unwrap_model(trainer.model_wrapped).parameters()
    return sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)


def full_parameters(trainer) -> dict[str, torch.Tensor]:
    """Every parameter of the unwrapped model, gathered from its ZeRO-3 shards where it is sharded."""
    import deepspeed

    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        return {name: p.detach().clone().cpu() for name, p in params.items()}


def main(recipe: str, out_dir: str) -> None:
    from thermorl.recipe import load_recipe
    from thermorl.train import train
    from thermorl.trainers import ThermoGRPOTrainer

    drawn: list[int] = []
    make_sampler = ThermoGRPOTrainer._get_train_sampler
    ThermoGRPOTrainer._get_train_sampler = lambda self, *a, **k: RecordingSampler(make_sampler(self, *a, **k), drawn)

    trainer = train(*load_recipe(recipe))
    result = {
        "params": full_parameters(trainer),
        "local_numel": local_numel(trainer),
        "drawn": drawn,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "world_size": trainer.accelerator.num_processes,
        "zero_stage": trainer.accelerator.state.deepspeed_plugin.zero_stage,
        "metrics": sorted({k for entry in trainer.state.log_history for k in entry}),
    }
    rank = trainer.accelerator.process_index
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
