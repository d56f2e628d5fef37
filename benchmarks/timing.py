"""Wall-clock timing shared by the benchmarks: synchronise the GPU (if any) around the timed call."""

import time

import torch


def seconds(function) -> float:
    """Seconds one call of `function` takes, with queued GPU work finished before and after."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start
