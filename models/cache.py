"""The thermorl cache (`$THERMORL_CACHE`, else ~/.cache/thermorl) and how a model folder gets into it.

A cached model is built in a temporary folder beside its final name and renamed into place, so a folder under the
final name is always complete. The temporary folder's name carries the builder's process id: one whose process is
gone (killed mid-build) is removed by the next build, and one whose process still runs is left to it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("THERMORL_CACHE", Path.home() / ".cache" / "thermorl"))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned_builds(root: Path, prefix: str) -> None:
    """Temporary folders `prefix`PID-... whose process is gone."""
    for folder in root.glob(f"{prefix}*"):
        pid = folder.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def build_atomically(final: Path, build: Callable[[Path], Path], prefix: str) -> Path:
    """`final`, built by `build(work_folder)` (which returns the finished folder inside work_folder) unless it
    exists. Two processes building the same folder both finish; the second keeps the first's, which the callers'
    deterministic builds make equal to its own."""
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(final.parent, prefix)
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=final.parent))
    try:
        built = build(work)
        try:
            os.replace(built, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
