"""Serve one exported model with onnxruntime. NO torch import: the API process stays light.

A model directory holds model.onnx, tokenizer.json, labels.json (class names, index = class id) and
spec.json (the resolved TrainingSpec). Create one OnnxPredictor per model per process, after any fork;
`InferenceSession.run` is thread-safe, so threads may share it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.ml.tokenizer import TextEncoder

log = logging.getLogger(__name__)

# What OnnxPredictor reads from a model directory.
MODEL_FILES = ("model.onnx", "tokenizer.json", "labels.json", "spec.json")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Texts per onnxruntime call: one call for any request under the default MAX_PREDICT_TEXTS (1000), while the
# padded [B, T] tensors stay bounded if a server allows far more.
_CHUNK = 1024


def _gpu_visible() -> bool:
    """True when an NVIDIA driver is present and CUDA_VISIBLE_DEVICES does not hide every GPU."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()


def choose_providers() -> list[str]:
    """CUDA then CPU when onnxruntime has CUDA and a GPU is present, else CPU alone."""
    # onnxruntime-gpu lists CUDA even on CPU-only machines, then logs a red error when asked to use it.
    if CUDA in ort.get_available_providers() and _gpu_visible():
        return [CUDA, CPU]
    return [CPU]


class OnnxPredictor:
    """Loads a model directory and classifies texts."""

    def __init__(self, model_dir: Path, *, intra_op_threads: int = 0) -> None:
        model_dir = Path(model_dir)
        self.model_dir = model_dir
        self._labels: list[str] = json.loads((model_dir / "labels.json").read_text(encoding="utf-8"))
        spec = json.loads((model_dir / "spec.json").read_text(encoding="utf-8"))
        self.encoder = TextEncoder.from_file(model_dir / "tokenizer.json", spec["tokenizer"]["max_length"])

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads  # 0 = onnxruntime's default (one per core)
        # One model graph is a chain of ops: parallel branches gain nothing, and threads cost memory.
        options.inter_op_num_threads = 1
        # Spinning threads burn CPU between calls and slowed the rest of the process many times over (ORT #13808).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: per-node placement warnings are noise here

        path = str(model_dir / "model.onnx")
        wanted = choose_providers()
        try:
            self.session = ort.InferenceSession(path, sess_options=options, providers=wanted)
        except Exception:
            if wanted == [CPU]:
                raise
            log.info("CUDA provider failed for %s; using CPU", model_dir, exc_info=True)
            self.session = ort.InferenceSession(path, sess_options=options, providers=[CPU])
        # onnxruntime falls back to CPU silently when CUDA cannot start (ORT #23372), so report what we got.
        if CUDA in wanted and CUDA not in self.session.get_providers():
            log.info("CUDA provider unavailable for %s; using CPU", model_dir)

    @property
    def labels(self) -> list[str]:
        """Class names, index = class id."""
        return list(self._labels)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, best first."""
        return self.session.get_providers()

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Raw model scores, float32 [B, C]."""
        feeds = {"input_ids": input_ids.astype(np.int64, copy=False),
                 "attention_mask": attention_mask.astype(np.int64, copy=False)}
        (out,) = self.session.run(["logits"], feeds)
        return np.asarray(out, dtype=np.float32)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, float32 [B, C]."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self._labels)), dtype=np.float32)
        if len(texts) <= _CHUNK:
            z = self.logits(*self.encoder.encode(texts))
        else:
            z = np.concatenate([self.logits(*self.encoder.encode(texts[i : i + _CHUNK]))
                                for i in range(0, len(texts), _CHUNK)])
        # In place: this runs on every request, and a one-text request is mostly fixed costs.
        z -= z.max(axis=1, keepdims=True)  # exp of the shifted scores cannot overflow
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def predict(self, texts: Sequence[str], top_k: int = 1,
                abstain_threshold: float | Mapping[str, float] | None = None) -> list[dict]:
        """Best label, its score, and the `top_k` best labels per text (top_k capped at the label count).

        A text whose best score is under `abstain_threshold` (one number, or {label: number} for the best label)
        gets `label: None, abstained: True`, with its scores kept."""
        return self.rank(self.predict_proba(texts), top_k, abstain_threshold)

    def rank(self, proba: np.ndarray, top_k: int = 1,
             abstain_threshold: float | Mapping[str, float] | None = None) -> list[dict]:
        """`predict`'s answer for probabilities this model gave (predict_proba's rows, possibly of a larger batch)."""
        k = max(1, min(top_k, len(self._labels)))
        # argsort of the negation is stable, so ties keep class-id order.
        order = np.argsort(-proba, axis=1, kind="stable")[:, :k].tolist()
        limits = self._thresholds(abstain_threshold)
        labels = self._labels
        out = []
        for p, idx in zip(proba.tolist(), order):  # plain floats: cheaper than numpy scalars one by one
            ranked = [{"label": labels[j], "score": p[j]} for j in idx]
            best = idx[0]
            abstained = limits is not None and p[best] < limits[best]
            out.append({"label": None if abstained else labels[best], "score": p[best],
                        "abstained": abstained, "top_k": ranked})
        return out

    def _thresholds(self, abstain_threshold: float | Mapping[str, float] | None) -> list[float] | None:
        """The abstain threshold of each class id (-1 where a class never abstains); None when none does."""
        if abstain_threshold is None:
            return None
        if isinstance(abstain_threshold, Mapping):
            return [abstain_threshold.get(name, -1.0) for name in self._labels]
        return [abstain_threshold] * len(self._labels)

    def warm_up(self) -> None:
        """Run one tiny batch so the first real request does not pay for lazy initialisation."""
        self.predict_proba(["warm up"])
