"""Experiment tracking through the Trainer's `report_to`: W&B goes offline by itself when no API key is available.

Without a key, transformers' W&B integration would stop the run at `wandb.init` with a login prompt (or an error
on a cluster). thermorl sets WANDB_MODE=offline instead, before the Trainer initialises W&B, and says where the run
is written and how to upload it (`wandb sync DIR`). WANDB_MODE set by the user is left alone. The recipe's
`project` becomes WANDB_PROJECT, and its `output_dir` WANDB_DIR (W&B's wandb/ folder), unless those are set.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

from transformers import TrainerCallback

DEFAULT_WANDB_HOST = "https://api.wandb.ai"
_wandb_dir_set: str | None = None  # the WANDB_DIR prepare_reporting set (a user's own is left alone)


def reports_to_wandb(training_args) -> bool:
    return "wandb" in (training_args.report_to or [])  # TrainingArguments expands "all" to the installed ones


def wandb_api_key_available(env=os.environ) -> bool:
    """WANDB_API_KEY, or a .netrc entry (NETRC or ~/.netrc, as `wandb login` writes) for the W&B host."""
    if env.get("WANDB_API_KEY"):
        return True
    host = urlsplit(env.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST)).hostname
    path = env.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def prepare_reporting(training_args) -> list[TrainerCallback]:
    """Set W&B's environment for this run; returns the callbacks to pass to the trainer."""
    if not reports_to_wandb(training_args):
        return []
    if training_args.project != "huggingface" and not os.environ.get("WANDB_PROJECT"):
        os.environ["WANDB_PROJECT"] = training_args.project
    global _wandb_dir_set
    if os.environ.get("WANDB_DIR", "") in ("", _wandb_dir_set):  # unset, or set by an earlier run of this process
        # W&B's local files (an offline run, the logs of an online one) in the run's folder, not where the command ran.
        _wandb_dir_set = os.environ["WANDB_DIR"] = os.path.abspath(training_args.output_dir)
    if "WANDB_MODE" in os.environ or wandb_api_key_available():
        return []
    os.environ["WANDB_MODE"] = "offline"
    if training_args.process_index == 0:
        print("W&B: no API key (WANDB_API_KEY or `wandb login`), so this run logs offline.", flush=True)
    return [OfflineWandbRunLocation()]


class OfflineWandbRunLocation(TrainerCallback):
    """Prints the offline run's folder and the command that uploads it, once W&B has opened the run."""

    def on_train_begin(self, args, state, control, **kwargs):
        self._announce(state, "logging offline to")

    def on_train_end(self, args, state, control, **kwargs):
        self._announce(state, "written offline to")

    @staticmethod
    def _announce(state, verb: str) -> None:
        import wandb

        if not state.is_world_process_zero or wandb.run is None:
            return
        run_dir = Path(wandb.run.settings.sync_dir)
        print(f"W&B run {wandb.run.id} {verb} {run_dir}; upload it with: wandb sync {run_dir}", flush=True)
