"""Evaluation of a classifier's probabilities: the numbers users ask for, computed with scikit-learn.

Pure numpy + scikit-learn (no torch), so it evaluates whatever produced the probabilities: the worker feeds it
the exported ONNX model's output, i.e. exactly what will be served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

# Equal-width confidence bins for the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15
# Misclassified examples kept per split: enough to see a pattern, small enough for a JSON reply.
MISCLASSIFIED_SAMPLE = 25
SNIPPET_CHARS = 300


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_b |accuracy_b − confidence_b| · n_b / n over equal-width bins of the top-class probability."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += abs(correct[in_bin].mean() - confidence[in_bin].mean()) * in_bin.mean()
    return float(ece)


def evaluate(probs: np.ndarray, y_true: Sequence[int], label_names: list[str], texts: Sequence[str],
             *, sample: int = MISCLASSIFIED_SAMPLE) -> dict[str, Any]:
    """Accuracy, macro/micro/weighted P/R/F1, per-class metrics, confusion matrix, log loss, ECE, misclassified."""
    y = np.asarray(y_true, dtype=np.int64)
    classes = list(range(len(label_names)))
    pred = probs.argmax(axis=1)
    out: dict[str, Any] = {"examples": int(len(y)), "accuracy": float(accuracy_score(y, pred))}
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=classes, average=average, zero_division=0)
        out[f"{average}_precision"], out[f"{average}_recall"], out[f"{average}_f1"] = float(p), float(r), float(f)
    p, r, f, support = precision_recall_fscore_support(y, pred, labels=classes, average=None, zero_division=0)
    out["per_class"] = [
        {"label": name, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, name in enumerate(label_names)
    ]
    out["confusion_matrix"] = {"labels": list(label_names),
                               "matrix": confusion_matrix(y, pred, labels=classes).tolist()}  # rows: true label
    # Clip so one overconfident mistake gives a large but finite loss (sklearn clips the same way).
    out["log_loss"] = float(log_loss(y, np.clip(probs, 1e-15, 1.0), labels=classes))
    out["ece"] = expected_calibration_error(probs, y)
    wrong = np.flatnonzero(pred != y)
    # The most confident mistakes first: those are the ones worth reading.
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:sample]
    out["misclassified"] = [
        {"text": texts[i][:SNIPPET_CHARS], "label": label_names[y[i]], "predicted": label_names[pred[i]],
         "score": float(probs[i, pred[i]]), "label_score": float(probs[i, y[i]])}
        for i in wrong
    ]
    return out
