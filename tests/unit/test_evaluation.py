import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score

from worker.ml.evaluation import evaluate, expected_calibration_error

pytestmark = pytest.mark.unit

LABELS = ["a", "b", "c"]
Y = np.array([0, 0, 1, 1, 2, 2, 2, 0])
PROBS = np.array([
    [0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
    [0.1, 0.1, 0.8], [0.5, 0.2, 0.3], [0.05, 0.05, 0.9], [0.9, 0.05, 0.05],
])
TEXTS = [f"text {i}" for i in range(len(Y))]


def test_numbers_match_scikit_learn():
    ev = evaluate(PROBS, Y, LABELS, TEXTS)
    pred = PROBS.argmax(axis=1)
    assert ev["accuracy"] == pytest.approx(accuracy_score(Y, pred))
    for avg in ("macro", "micro", "weighted"):
        assert ev[f"{avg}_f1"] == pytest.approx(f1_score(Y, pred, average=avg))
        assert ev[f"{avg}_precision"] == pytest.approx(precision_score(Y, pred, average=avg))
        assert ev[f"{avg}_recall"] == pytest.approx(recall_score(Y, pred, average=avg))
    assert ev["log_loss"] == pytest.approx(log_loss(Y, PROBS))
    per_f1 = f1_score(Y, pred, average=None)
    assert [c["f1"] for c in ev["per_class"]] == pytest.approx(list(per_f1))
    assert [c["support"] for c in ev["per_class"]] == [3, 2, 3]


def test_confusion_matrix_rows_are_true_labels():
    ev = evaluate(PROBS, Y, LABELS, TEXTS)
    assert ev["confusion_matrix"] == {"labels": LABELS, "matrix": [[2, 1, 0], [0, 2, 0], [1, 0, 2]]}


def test_misclassified_most_confident_first():
    ev = evaluate(PROBS, Y, LABELS, TEXTS)
    assert [(m["text"], m["label"], m["predicted"]) for m in ev["misclassified"]] == [
        ("text 1", "a", "b"), ("text 5", "c", "a")]
    assert ev["misclassified"][0]["score"] == pytest.approx(0.6)
    assert ev["misclassified"][0]["label_score"] == pytest.approx(0.3)


def test_a_label_never_predicted_or_absent_is_still_listed():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    ev = evaluate(probs, [0, 1], LABELS, ["x", "y"])
    assert ev["per_class"][2] == {"label": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert len(ev["confusion_matrix"]["matrix"]) == 3


def test_expected_calibration_error_by_hand():
    # Two bins used: confidence 0.9 (both right: |1-0.9|) and 0.6 (one of two right: |0.5-0.6|).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.5 * 0.1 + 0.5 * 0.1)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == pytest.approx(0.0)
