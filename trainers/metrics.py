"""Scalar metrics from pure loss functions into a TRL trainer's metric buffer."""

import torch

from .trl_surface import metric_buffer


def log_mean_metrics(trainer, mode: str, metrics: dict[str, float]) -> None:
    """Average scalar metrics over processes with a single collective call, into TRL's metric buffer."""
    names = sorted(metrics)
    values = torch.tensor([float(metrics[n]) for n in names], device=trainer.accelerator.device)
    values = trainer.accelerator.gather(values.unsqueeze(0)).nanmean(dim=0)
    buffer = metric_buffer(trainer, mode)
    for name, value in zip(names, values.tolist(), strict=True):
        buffer[name].append(value)
