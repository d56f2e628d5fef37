"""What a user sees: thermorl's progress and results on the console; third-party warnings and logs in a file.

transformers, TRL, accelerate, datasets and DeepSpeed each print their own deprecation warnings, load/save progress
bars and informational logs (DeepSpeed warns that it "set the accelerator to CPU" in runs that never use it). Here
their records go to `thermorl.log` in the run's output folder (kept in memory until that folder is known), and the
console shows only their errors, the warnings of thermorl's own code and of the user's (reward functions), the
training progress bar with a short line of key metrics at each logging step, and thermorl's results.
`--verbose` (or THERMORL_VERBOSE=1) shows everything as the libraries print it.

vLLM is one of those libraries, with two twists: it applies its own logging config (a handler on stdout) whenever
an engine starts, so thermorl hands it one (VLLM_LOGGING_CONFIG_PATH) whose handler, `RunLogHandler`, routes its
records like the others' (a VLLM_CONFIGURE_LOGGING or VLLM_LOGGING_CONFIG_PATH of your own is left alone); and its
engine runs in processes of its own, which also print C++ warnings and progress bars: started inside
`output_to_run_log`, they write all of it to the run's log file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import logging.handlers
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

LOG_FILE_NAME = "thermorl.log"
# Loggers of the libraries thermorl drives (their children propagate to them).
LIBRARY_LOGGERS = ("transformers", "trl", "accelerate", "datasets", "peft", "huggingface_hub", "torch", "vllm")
# DeepSpeed's logger prints through its own stdout handler, created when deepspeed is imported.
DEEPSPEED_LOGGER = "DeepSpeed"
VLLM_LOGGING_ENV = ("VLLM_CONFIGURE_LOGGING", "VLLM_LOGGING_CONFIG_PATH")
# Shown in the progress line when a logging step reports them (ThermoGRPOTrainer first, then ThermoADPOTrainer).
PROGRESS_METRICS = ("loss", "reward", "reward_std", "entropy", "completions/mean_length", "rewards/accuracies")
# thermorl's subpackages (pyproject's package-dir): warnings raised in their files are thermorl's own.
OWN_PACKAGES = ("thermorl", "thermorl.losses", "thermorl.trainers", "thermorl.rollouts", "thermorl.tasks",
                "thermorl.models", "thermorl.evaluation")

_verbose = False
_configured = False  # configure() ran in this process (a thermorl command, not a vLLM engine process)
_run_log: Path | None = None  # the log file log_to_run_folder opened


class _UntilRunFolder(logging.handlers.MemoryHandler):
    """Keeps the newest `capacity` records until the run's log file is its target, then writes straight through
    (commands without a run folder, such as `thermorl eval`, keep only the newest)."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.target is not None:
            self.target.handle(record)
            return
        self.buffer.append(record)
        del self.buffer[: -self.capacity]

    def close(self) -> None:
        # logging.config.dictConfig closes every handler of the process (vLLM applies its logging config again when
        # an engine starts): the run log stays the target, and its FileHandler reopens the file on the next record.
        self.flush()


_file_records = _UntilRunFolder(capacity=10_000)
_file_records.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
_library_console = logging.StreamHandler(sys.stderr)  # the libraries' errors (warnings too when verbose)
# datasets' file readers log the error they then raise ("Failed to read file ..."); the raised one is reported as
# one line naming the file (tasks/data.py), so the logged copy goes to the log file only.
_library_console.addFilter(lambda record: _verbose or not record.name.startswith("datasets.packaged_modules."))
_library_console.setLevel(logging.ERROR)
_warnings_console = logging.StreamHandler(sys.stderr)  # warnings.warn from thermorl and user code (all when verbose)
_warnings_console.setFormatter(logging.Formatter("%(message)s"))
_warnings_console.addFilter(lambda record: _verbose or not _from_library(record))


def verbose() -> bool:
    return _verbose


def configure(verbose: bool = False) -> None:
    """Route third-party warnings and logs to the run's log file (and to the console only when `verbose`)."""
    global _verbose, _configured
    _verbose = verbose
    _configured = True
    logging.captureWarnings(True)  # warnings.warn -> the 'py.warnings' logger
    _library_console.setLevel(logging.WARNING if verbose else logging.ERROR)
    for name in LIBRARY_LOGGERS:  # adding a handler or filter twice is a no-op, so configure() may run again
        logger = logging.getLogger(name)
        logger.addHandler(_file_records)
        logger.addHandler(_library_console)
        logger.propagate = False
    _remove_library_console_handlers()
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.addHandler(_file_records)
    warnings_logger.addHandler(_warnings_console)
    warnings_logger.propagate = False
    # A logger-level filter: it sees DeepSpeed's records before DeepSpeed's own handler does, whenever that is added.
    logging.getLogger(DEEPSPEED_LOGGER).addFilter(_to_file_unless_verbose)
    if not verbose:
        _route_vllm_logs()
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
        if importlib.util.find_spec("datasets") is not None:
            import datasets

            datasets.disable_progress_bars()  # "Tokenizing train dataset", ...


def _remove_library_console_handlers() -> None:
    """transformers, datasets and huggingface_hub attach their own stderr handler to their root logger when first
    imported (huggingface_hub's prints its retry warnings when the Hub cannot be reached)."""
    import huggingface_hub.utils.logging  # noqa: F401 - configures the 'huggingface_hub' logger
    import transformers.utils.logging  # noqa: F401 - configures the 'transformers' logger

    if importlib.util.find_spec("datasets") is not None:
        import datasets  # noqa: F401 - configures the 'datasets' logger
    for name in ("transformers", "datasets", "huggingface_hub"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if handler not in (_file_records, _library_console):
                logger.removeHandler(handler)


def _route_vllm_logs() -> None:
    """Point vLLM's logging at RunLogHandler through VLLM_LOGGING_CONFIG_PATH (a dictConfig file, which vLLM applies
    when an engine starts, here and in the engine's processes), unless vLLM is absent or the user configured it."""
    if any(name in os.environ for name in VLLM_LOGGING_ENV) or importlib.util.find_spec("vllm") is None:
        return
    config = json.dumps({
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"thermorl": {"()": f"{__name__}.RunLogHandler"}},
        "loggers": {"vllm": {"handlers": ["thermorl"], "level": os.environ.get("VLLM_LOGGING_LEVEL", "INFO"),
                             "propagate": False}},
    })
    digest = hashlib.sha256(config.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"thermorl-vllm-logging-{digest}.json"
    if not path.is_file():  # named by its content: written once, atomically, whichever process gets there first
        staged = path.with_name(f"{path.name}.{os.getpid()}")
        staged.write_text(config)
        os.replace(staged, path)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path)


class RunLogHandler(logging.Handler):
    """The handler of vLLM's logger under thermorl: records to the run's log file and errors to the console, as for
    the other libraries. In a vLLM engine process (no thermorl command configured it) records go to its stderr,
    which `output_to_run_log` made the run's log file."""

    def emit(self, record: logging.LogRecord) -> None:
        if not _configured:
            sys.stderr.write(_file_records.format(record) + "\n")
            return
        _file_records.handle(record)
        if record.levelno >= _library_console.level:
            _library_console.handle(record)


@contextlib.contextmanager
def output_to_run_log():
    """Inside the block, stdout and stderr (the file descriptors) write to the log file log_to_run_folder opened,
    and so, for their whole life, do those of the processes started inside it (vLLM's engine processes, with their
    C++ warnings, progress bars and logs). A no-op when verbose or before log_to_run_folder."""
    if _verbose or _run_log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(_run_log, "a") as log:
        for fd in saved:
            os.dup2(log.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


def _to_file_unless_verbose(record: logging.LogRecord) -> bool:
    _file_records.handle(record)
    return _verbose


@functools.cache
def _library_dirs() -> tuple[tuple[str, ...], tuple[str, ...]]:
    own = []
    for package in OWN_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            own.extend(os.path.realpath(p) + os.sep for p in spec.submodule_search_locations)
    paths = sysconfig.get_paths()
    libraries = {os.path.realpath(paths[key]) + os.sep for key in ("purelib", "platlib", "stdlib")}
    return tuple(own), tuple(libraries)


def _from_library(record: logging.LogRecord) -> bool:
    """A captured warning's message starts with the file that raised it: is that file an installed library's?"""
    filename = os.path.realpath(record.getMessage().split(":", 1)[0])
    own, libraries = _library_dirs()
    return not filename.startswith(own) and filename.startswith(libraries)


def log_to_run_folder(output_dir: str | os.PathLike) -> Path:
    """Write the records kept so far, and all later ones, to `output_dir/thermorl.log` (one file per process)."""
    global _run_log
    rank = int(os.environ.get("RANK", "0"))
    path = Path(output_dir) / (LOG_FILE_NAME if rank == 0 else f"thermorl.rank{rank}.log")
    path.parent.mkdir(parents=True, exist_ok=True)
    target = logging.FileHandler(path, mode="a", encoding="utf-8")
    target.setFormatter(_file_records.formatter)
    previous = _file_records.target
    _file_records.setTarget(target)
    _file_records.flush()
    if previous is not None:
        previous.close()
    _run_log = path
    return path


def progress_line(logs: dict, state) -> str:
    """One line for a logging step: the step and the key metrics, not the full metric dict."""
    if "train_runtime" in logs:
        return f"done: {state.global_step} steps in {float(logs['train_runtime']):.1f} s"
    shown = [f"{key} {logs[key]:.4g}" for key in PROGRESS_METRICS if isinstance(logs.get(key), int | float)]
    return f"step {state.global_step}/{state.max_steps}  " + "  ".join(shown)


def quiet_trainer(trainer, show_progress: bool = True) -> None:
    """Replace the Trainer's metric-dict printing with `progress_line` (or with nothing, for a step the user does
    not need to follow); the full metrics stay in trainer_state.json (log_history) and in the configured trackers.
    Verbose runs keep the Trainer's own output."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if _verbose:
        return
    progress_lines, printed_lines = _progress_callbacks()
    if trainer.pop_callback(ProgressCallback) is not None and show_progress:
        trainer.add_callback(progress_lines)
    if trainer.pop_callback(PrinterCallback) is not None and show_progress:
        trainer.add_callback(printed_lines)


def _progress_callbacks():
    # Built on first use: they subclass transformers' classes, and `thermorl list` should not import the Trainer.
    from transformers.trainer_callback import ProgressCallback, TrainerCallback

    class ProgressLines(ProgressCallback):
        """The Trainer's progress bar, with `progress_line` written above it at each logging step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                self.training_bar.write(progress_line(logs, state))

    class PrintedLines(TrainerCallback):
        """`disable_tqdm: true`: `progress_line` printed at each logging step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                print(progress_line(logs, state), flush=True)

    return ProgressLines, PrintedLines

