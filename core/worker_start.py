"""Whether a training worker can start here, and how the API learns why none did.

`pip install -e .` installs the API alone; the training stack is the `worker` extra. A worker started without it
used to crash on its first import of that stack and be restarted forever while jobs stayed queued. Now it checks
first, says what to install and exits with EXIT_CANNOT_START, which `textclf serve` does not restart; it leaves
the reason in the artifact directory (shared with the API in compose too) for /readyz to show.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from core.config import Settings

# What the worker imports before its first job (worker/celery_app.py preloads torch, onnxscript and the training
# and export code, which import onnx and sklearn), and the distribution that provides each.
WORKER_MODULES = {"torch": "torch", "onnx": "onnx", "onnxscript": "onnxscript", "sklearn": "scikit-learn"}
# EX_CONFIG in sysexits.h: the set-up is wrong, and starting again will not fix it.
EXIT_CANNOT_START = 78
INSTALL_HINT = ("install torch first (`pip install torch`, or the build that fits the machine, as the Makefile "
                "does), then `pip install -e \".[worker]\"`")


def missing_modules() -> list[str]:
    """The worker's modules that cannot be imported here (found without importing them)."""
    return [name for name in WORKER_MODULES if importlib.util.find_spec(name) is None]


def failure_path(settings: Settings) -> Path:
    return settings.artifact_dir / "worker-start-failure.txt"


def require_worker_dependencies(settings: Settings) -> None:
    """Exit with EXIT_CANNOT_START, saying what to install, when a worker module is missing."""
    missing = missing_modules()
    if not missing:
        return
    message = (f"worker dependencies missing ({', '.join(WORKER_MODULES[name] for name in missing)}): "
               f"{INSTALL_HINT}")
    print(f"textclf worker cannot start: {message}", file=sys.stderr, flush=True)
    path = failure_path(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(message)
        partial.replace(path)  # whole or not at all: the API may read it at any moment
    except OSError:
        pass  # the message above is the main report; /readyz then says only that no worker was seen
    raise SystemExit(EXIT_CANNOT_START)


def clear_start_failure(settings: Settings) -> None:
    """A worker started: an earlier failure to start no longer explains anything."""
    try:
        failure_path(settings).unlink(missing_ok=True)
    except OSError:
        pass


def start_failure(settings: Settings) -> str | None:
    """Why the last worker that tried to start here could not, if it could not."""
    try:
        return failure_path(settings).read_text()
    except OSError:
        return None
