"""Warm-up SFT on a built-in task, cached on disk: of the tiny model (always) and of SmolLM2-135M-Instruct (when a
recipe names `warmup_dataset`).

RL from a random model would see reward 0 everywhere and learn nothing; a short SFT with TRL's SFTTrainer puts
the policy where some sampled answers are right, which is where GRPO-family losses start to work. SmolLM2 starts
there on sums, but rarely on multi-step word problems (pass@16 at T = 1 22% on one step); a few hundred worked
solutions (tasks/chat.py) put it where sampled answers are often right (two steps: greedy 50%, pass@16 at T = 1
91% on 32 questions). The result is cached under a key made of everything that determines it, and written to a
temporary folder first, so an interrupted warm-up never leaves a half-written model where a finished one is
expected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .cache import build_atomically, cache_root
from .smollm2 import GGUF_SHA256, smollm2_model_path
from .tiny import build_tiny_model, tiny_config

TINY_MODEL_NAME = "thermorl:tiny"


@dataclass(frozen=True)
class WarmupSettings:
    task: str = "arithmetic"
    examples: int = 4000
    epochs: float = 2.0
    learning_rate: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    model_size: str = "default"  # a key of models.tiny.TINY_SIZES


@dataclass(frozen=True)
class ChatWarmupSettings:
    """SmolLM2-135M-Instruct's warm-up: 40 steps of 8 worked solutions at 5e-5 (~8 min at 2 threads). Measured on
    word_problems:steps=2 (docs/real-model.md, 32 held-out questions): greedy 50% and pass@16 at T = 1 91% after it
    (34% and 84% on another draw of data and questions), 0 of 24 greedy before."""

    task: str = "word_problems:steps=2"
    examples: int = 320
    epochs: float = 1.0
    learning_rate: float = 5e-5
    batch_size: int = 8
    seed: int = 0


def _cache_key(settings: WarmupSettings, held_out_prompts: list[str]) -> str:
    # The size enters through its config, so the default size keeps the key it had before sizes had names.
    warmup = {key: value for key, value in asdict(settings).items() if key != "model_size"}
    blob = json.dumps(
        {"model": tiny_config(settings.model_size), "warmup": warmup, "held_out": sorted(held_out_prompts),
         "format": 1},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def warm_tiny_model(
    settings: WarmupSettings = WarmupSettings(),
    held_out_prompts: list[str] = (),
    cache_dir: str | Path | None = None,
    show_logs: bool = False,
) -> str:
    """Return the path of the tiny model warmed up on `settings.task`, building it on the first call.

    `held_out_prompts` never appear in the SFT data, so evaluating on them measures generalisation. The SFT
    Trainer's metric dicts are printed only with `show_logs` (the caller says that the warm-up runs).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer

    from ..tasks import task_from_spec

    tiny_config(settings.model_size)  # an unknown size fails here, before any work
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    final = root / f"tiny-{settings.task.replace(':', '-').replace('=', '')}-{_cache_key(settings, list(held_out_prompts))}"
    if (final / "config.json").exists():
        return str(final)

    def build(work: Path) -> Path:
        base = build_tiny_model(work / "base", seed=settings.seed, size=settings.model_size)
        tokenizer = AutoTokenizer.from_pretrained(base)
        task = task_from_spec(settings.task)
        data = task.make_sft_dataset(
            settings.examples, seed=settings.seed + 1_000_003, exclude_prompts=list(held_out_prompts)
        )
        # The completion ends with EOS so the policy learns to stop after the answer.
        data = Dataset.from_dict(
            {"prompt": data["prompt"], "completion": [c + tokenizer.eos_token for c in data["completion"]]}
        )
        return _sft(base, tokenizer, data, work, settings, show_logs, warmup_steps=10, logging_steps=25,
                    max_length=64)

    # A second process finishing the same warm-up keeps the first's: the cache key covers everything the warm-up
    # depends on and it is deterministic, so that model equals this one.
    build_atomically(final, build, prefix=".warmup-")
    return str(final)


def warm_chat_model(
    settings: ChatWarmupSettings,
    held_out_prompts: list[str] = (),
    cache_dir: str | Path | None = None,
    show_logs: bool = False,
) -> str:
    """Return the path of SmolLM2-135M-Instruct after an SFT on `settings.task`'s worked solutions (the task's
    `make_sft_dataset`, never its `held_out_prompts`), building it on the first call."""
    from transformers import AutoTokenizer

    from ..tasks import task_from_spec

    task = task_from_spec(settings.task)  # a typo or a task without worked solutions fails here, before any work
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    blob = json.dumps({"model": GGUF_SHA256, "warmup": asdict(settings), "held_out": sorted(held_out_prompts),
                       "format": 1}, sort_keys=True)
    name = settings.task.replace(":", "-").replace("=", "").replace(",", "-")
    final = root / f"smollm2-135m-{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
    if (final / "config.json").exists():
        return str(final)
    data = task.make_sft_dataset(settings.examples, seed=settings.seed + 1_000_003,
                                 exclude_prompts=list(held_out_prompts))
    base = smollm2_model_path()
    # Announced: about 8 minutes at 2 threads, once per task and held-out split.
    print(f"Warming SmolLM2-135M-Instruct up on {settings.examples} worked solutions of {settings.task} into {final} "
          "(once)", flush=True)

    def build(work: Path) -> Path:
        tokenizer = AutoTokenizer.from_pretrained(base)
        # The chat template ends the assistant's message, so the policy learns to stop after the boxed answer.
        # Minutes long: a progress bar with the time left (and no metric dicts unless asked for).
        return _sft(str(base), tokenizer, data, work, settings, show_logs, warmup_steps=3, logging_steps=5,
                    max_length=384, disable_tqdm=False, logging_strategy="steps" if show_logs else "no")

    build_atomically(final, build, prefix=".warmup-")
    return str(final)


def _sft(model, tokenizer, data, work: Path, settings, show_logs: bool, **config) -> Path:
    """TRL's SFTTrainer on prompt-completion `data` (loss on the completions only), saved to work/model."""
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**{
        "output_dir": str(work / "sft"),
        "num_train_epochs": settings.epochs,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": "cosine",
        "per_device_train_batch_size": settings.batch_size,
        "seed": settings.seed,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "bf16": False,
        "completion_only_loss": True,
        "disable_tqdm": True,
        **config,
    })
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    if not show_logs:
        trainer.remove_callback(PrinterCallback)  # disable_tqdm: the Trainer prints through this callback
    trainer.train()
    trainer.save_model(str(work / "model"))
    tokenizer.save_pretrained(str(work / "model"))
    return work / "model"
