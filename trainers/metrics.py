"""Scalar metrics of the loss and the rollout into a TRL trainer's metric buffer, copied to the host once per log line.

A metric is a float or a 0-d tensor. Reading a tensor's value on the host waits for the device: done per metric and
per micro-batch it would stall a GPU several times a step. So metrics stay on the device, queued, until TRL writes its
next log line: the trainers call `QueuedMetrics.flush` first thing in their `log`, which makes one host copy of
everything queued since the last line and appends it to TRL's buffer, which TRL then averages with its own metrics.
"""

from __future__ import annotations

import torch

from .trl_surface import metric_buffer


class QueuedMetrics:
    """A trainer's metrics on the device, per mode ("train" or "eval"), until its next log line."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.queued: list[tuple[str, list[str], torch.Tensor]] = []

    def add(self, mode: str, metrics: dict[str, float | torch.Tensor], average_over_processes: bool = True) -> None:
        """Queue `metrics` for the next log line of `mode`: with `average_over_processes`, each averaged over the
        processes (one collective call; NaN, a metric a process has no tokens for, left out); without, they are the
        same on every process already."""
        if not metrics:
            return
        names = sorted(metrics)
        values = torch.stack([
            torch.as_tensor(metrics[name], dtype=torch.float32, device=self.accelerator.device).detach().reshape(())
            for name in names
        ])
        if average_over_processes:
            values = self.accelerator.gather(values.unsqueeze(0)).nanmean(dim=0)
        self.queued.append((mode, names, values))

    def flush(self, trainer) -> None:
        """Append every queued metric to `trainer`'s TRL buffer, with one host copy. A NaN (a metric of a micro-batch
        with no token to measure it on, on every process) is left out, as TRL leaves out what it cannot measure."""
        if not self.queued:
            return
        host = torch.cat([values for _, _, values in self.queued]).tolist()
        position = 0
        for mode, names, _ in self.queued:
            buffer = metric_buffer(trainer, mode)
            for name in names:
                if host[position] == host[position]:  # not NaN
                    buffer[name].append(host[position])
                position += 1
        self.queued.clear()
