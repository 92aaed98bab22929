"""End-of-epoch training checkpoints, so a job whose worker died resumes instead of starting over.

One file per job, `checkpoint.pt`, replaced atomically after every epoch: model, optimizer and scheduler
state, every random-number stream the loop draws from, the history and the best epoch so far. A resumed run
on the CPU continues exactly as the uninterrupted run would have (tests/unit/test_checkpoint.py).

Loading uses `torch.load(weights_only=True)`: only tensors and plain containers, never arbitrary pickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE_NAME = "checkpoint.pt"


def fingerprint(spec_json: dict[str, Any], data_hash: str | None) -> str:
    """What a checkpoint must match to be resumed: the exact spec and the exact training data."""
    payload = json.dumps({"spec": spec_json, "data": data_hash}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class CheckpointStore:
    """The last end-of-epoch state of one training run, in `folder`."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint

    @property
    def path(self) -> Path:
        return self.folder / FILE_NAME

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` next to the old checkpoint, fsync it, then rename over it: a kill at any point leaves
        either the previous epoch's checkpoint or this one, never half a file."""
        import torch  # here, not at import: the Celery parent imports this module and must not load torch/CUDA

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{FILE_NAME}.tmp"
        with open(tmp, "wb") as f:
            torch.save({**state, "fingerprint": self.fingerprint}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none, it belongs to another spec or data, or it is unreadable
        (then training starts over, which is always safe)."""
        if not self.path.exists():
            return None
        import torch

        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: never worth failing the job over
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, exc)
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring checkpoint %s: it was made for another spec or dataset", self.path)
            return None
        return state

    def clear(self) -> None:
        """Remove the checkpoint once the job has ended (in one of core.spec.TERMINAL_STATUSES)."""
        shutil.rmtree(self.folder, ignore_errors=True)
