"""The number of CPU threads torch uses for a CPU run, chosen by timing the run's own model.

torch starts one intra-op thread per core. That is not always faster: for a small model the work in one operation
is too little to split, and when another process keeps a core busy, OpenMP's threads wait (spinning) for the one
that lost its core at every operation. On the 2-core development machine with one busy neighbour,
`thermorl train quickstart --max_steps 10` trained in 73-80 s at torch's default of 2 threads and in 2.7 s at 1
(benchmarks/cpu_threads.py has the whole quickstart). Which count wins depends on the model, the machine and its
load, so the `thermorl` command times a training-like step of the model (no-grad forwards as in generation, one
forward and backward as in the loss) at 1 thread and at torch's default, and keeps the faster.

Only the `thermorl` command chooses (`enable()`), and only when the user has not: OMP_NUM_THREADS or
MKL_NUM_THREADS set leaves torch as it is. Library calls of `thermorl.train.train` keep torch's setting.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

USER_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
PROBE_SEQUENCE_LENGTH = 16  # prompt + completion of the tiny tasks; a longer probe costs more than it tells
PROBE_REPEATS = 2
# A candidate this many times slower than the best so far is not timed again: one sample says enough.
CLEARLY_SLOWER = 5.0

_enabled = False
_choice: ThreadChoice | None = None


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    seconds: dict[int, float]  # threads -> best time of one probe step

    def describe(self) -> str:
        timings = ", ".join(f"{n} thread{'s' if n > 1 else ''} {s * 1000:.0f} ms" for n, s in sorted(self.seconds.items()))
        return f"CPU threads: {self.threads} (one training-like step of the model: {timings}; OMP_NUM_THREADS overrides)"


def enable() -> None:
    """Let `use_fastest` choose (the `thermorl` command), unless the user set a thread count."""
    global _enabled
    _enabled = not any(os.environ.get(name) for name in USER_SETTINGS)


def chosen() -> ThreadChoice | None:
    return _choice


def use_fastest(model, batch_size: int) -> ThreadChoice | None:
    """Time `model` at 1 thread and at torch's default, set the faster; once per process, only when enabled and on
    the CPU. Returns the choice, or None when nothing was measured."""
    import torch

    global _choice
    if not _enabled or _choice is not None or next(model.parameters()).device.type != "cpu":
        return _choice
    default = torch.get_num_threads()
    if default <= 1:
        return None
    seconds: dict[int, float] = {}
    for threads in (1, default):
        torch.set_num_threads(threads)
        seconds[threads] = _time_probe(model, batch_size, best_so_far=min(seconds.values(), default=None))
    _choice = ThreadChoice(threads=min(seconds, key=seconds.get), seconds=seconds)
    torch.set_num_threads(_choice.threads)
    print(_choice.describe(), flush=True)
    return _choice


def _time_probe(model, batch_size: int, best_so_far: float | None) -> float:
    """Best time of a probe step over PROBE_REPEATS after one warm-up step, fewer if it is clearly slower."""
    import torch

    generator = torch.Generator().manual_seed(0)  # the global RNG the run is seeded with stays untouched
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(vocab, (batch_size, PROBE_SEQUENCE_LENGTH), generator=generator)
    was_training = model.training
    model.eval()  # no dropout: no draws from the global RNG
    try:
        best = float("inf")
        for repeat in range(PROBE_REPEATS + 1):
            started = time.perf_counter()
            _probe_step(model, ids)
            elapsed = time.perf_counter() - started
            if repeat > 0:
                best = min(best, elapsed)
            if best_so_far is not None and elapsed > CLEARLY_SLOWER * best_so_far:
                return elapsed
        return best
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def _probe_step(model, ids) -> None:
    import torch

    with torch.no_grad():  # generation: small forwards without gradients
        for end in (2, 4):
            model(input_ids=ids[:, :end])
    logits = model(input_ids=ids).logits  # the loss: a forward and a backward over the whole sequence
    logits.float().logsumexp(-1).mean().backward()


def use_fastest_before_warmup(model_args, training_args, tiny_model_size: str = "default") -> ThreadChoice | None:
    """For `thermorl:tiny`, choose on a randomly initialised tiny model (the warmed-up one has the same shape), so
    that the warm-up SFT already runs with the chosen count; other models are timed once loaded."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from .models.tiny import build_tiny_model
    from .models.warmup import TINY_MODEL_NAME

    if not _enabled or _choice is not None or model_args.model_name_or_path != TINY_MODEL_NAME:
        return _choice
    if training_args.device.type != "cpu":
        return None
    with tempfile.TemporaryDirectory() as folder, torch.random.fork_rng():
        model = AutoModelForCausalLM.from_pretrained(build_tiny_model(folder, size=tiny_model_size), dtype=torch.float32)
    return use_fastest(model, training_args.per_device_train_batch_size)
