"""Scalar metrics from pure loss functions into a TRL trainer's metric buffer."""

import torch


def log_mean_metrics(trainer, mode: str, metrics: dict[str, float]) -> None:
    """Average scalar metrics over processes with a single collective call, into `trainer._metrics[mode]`."""
    names = sorted(metrics)
    values = torch.tensor([float(metrics[n]) for n in names], device=trainer.accelerator.device)
    values = trainer.accelerator.gather(values.unsqueeze(0)).nanmean(dim=0)
    for name, value in zip(names, values.tolist(), strict=True):
        trainer._metrics[mode][name].append(value)
