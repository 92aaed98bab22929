"""Train tiny models on a learnable synthetic set, export to ONNX, check parity, and serve with OnnxPredictor."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import app.ml.predictor as predictor_mod
from app.ml.predictor import OnnxPredictor, choose_providers
from app.spec import OptimizerSpec, SchedulerSpec, TrainingSpec
from worker.ml import train as train_mod
from worker.ml.export import ParityError, check_parity, export_onnx
from worker.ml.train import (
    CudaUnavailable,
    TrainingCancelled,
    TrainingDiverged,
    build_optimizer,
    build_scheduler,
    evaluate_logits,
    resolve_device,
    stratified_split,
    train,
)

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")
LABELS = ["animals", "vehicles"]
ANIMALS = "cat dog horse cow sheep goat duck mouse tiger lion".split()
VEHICLES = "car bus train truck bike plane boat tram van ship".split()
FILLER = "the a saw near big small old red".split()


def make_data(n: int = 40, seed: int = 0) -> tuple[list[str], list[str]]:
    """n sentences, half per class: class words from two disjoint vocabularies mixed with shared filler."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = LABELS[i % 2]
        words = ANIMALS if label == "animals" else VEHICLES
        sentence = [rng.choice(FILLER) for _ in range(rng.randint(1, 6))] + rng.sample(words, 3)
        rng.shuffle(sentence)
        texts.append(" ".join(sentence))
        labels.append(label)
    return texts, labels


TEXTS, Y = make_data()


def tiny_spec(**overrides) -> TrainingSpec:
    """A spec small enough to train in well under a second on 2 cores."""
    model = {"embedding_dim": 16, "filter_sizes": [2, 3], "num_filters": 8, "ngram_buckets": 1000,
             **overrides.pop("model", {})}
    base = {"dataset_id": str(uuid.uuid4()), "epochs": 2, "batch_size": 8, "seed": 0, "device": "cpu",
            "tokenizer": {"vocab_size": 100, "max_length": 32}, "model": model}
    return TrainingSpec.model_validate({**base, **overrides})


def write_artifacts(result, spec: TrainingSpec, model_dir: Path) -> Path:
    """Lay out a model directory as the worker does."""
    model_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(result.model, model_dir / "model.onnx", vocab_size=result.encoder.vocab_size)
    result.encoder.save(model_dir / "tokenizer.json")
    (model_dir / "labels.json").write_text(json.dumps(LABELS))
    (model_dir / "spec.json").write_text(spec.model_dump_json())
    return model_dir


# -----------------------------------------------------------------------------
# train + export + parity for every model, optimizer and scheduler


@pytest.mark.parametrize(
    ("model", "optimizer", "scheduler", "batch_norm"),
    [
        ("textcnn", "sgd", "constant", False),
        ("textcnn", "momentum", "step", True),
        ("textcnn", "adam", "linear_warmup", False),
        ("textcnn", "adagrad", "plateau", False),
        ("fasttext", "nesterov", "cosine", False),
        ("fasttext", "adamw", "onecycle", True),
        ("fasttext", "rmsprop", "linear_warmup", False),
        ("fasttext", "adadelta", "constant", False),
    ],
)
def test_train_export_parity(tmp_path, model, optimizer, scheduler, batch_norm):
    spec = tiny_spec(model={"name": model, "batch_norm": batch_norm},
                     optimizer={"name": optimizer, "weight_decay": 0.01}, scheduler={"name": scheduler})
    result = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    assert len(result.history) == 2 and result.device == "cpu"
    assert not result.model.training
    path = tmp_path / "model.onnx"
    export_onnx(result.model, path, vocab_size=result.encoder.vocab_size)
    parity = check_parity(result.model, path, result.encoder, TEXTS)
    assert parity["argmax_agreement"] == 1.0 and parity["max_abs_diff"] <= 1e-4 and parity["cases"] >= 4
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one self-contained file, no temp left


def test_export_has_dynamic_named_axes(tmp_path):
    result = train(tiny_spec(max_steps=1), TEXTS, Y, label_names=LABELS, device=CPU)
    export_onnx(result.model, tmp_path / "model.onnx", vocab_size=result.encoder.vocab_size)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"input_ids": ["batch", "tokens"], "attention_mask": ["batch", "tokens"]}
    assert [o.name for o in graph.output] == ["logits"]


def test_check_parity_catches_a_stale_export(tmp_path):
    result = train(tiny_spec(max_steps=1), TEXTS, Y, label_names=LABELS, device=CPU)
    export_onnx(result.model, tmp_path / "model.onnx", vocab_size=result.encoder.vocab_size)
    with torch.no_grad():
        result.model.head.bias += torch.tensor([5.0, -5.0])  # torch now disagrees with the file
    with pytest.raises(ParityError):
        check_parity(result.model, tmp_path / "model.onnx", result.encoder, TEXTS)


# -----------------------------------------------------------------------------
# learning, determinism, progress, cancellation, divergence


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A TextCNN trained to convergence on the synthetic set, exported as a model directory."""
    # lr 0.03 and light dropout: the tiny model then fits the set within 8 epochs of 5 steps.
    spec = tiny_spec(epochs=8, optimizer={"name": "adam", "lr": 0.03}, model={"dropout": 0.1})
    progress: list[dict] = []
    result = train(spec, TEXTS, Y, label_names=LABELS, device=CPU, on_progress=progress.append)
    model_dir = write_artifacts(result, spec, tmp_path_factory.mktemp("model"))
    return result, progress, model_dir, spec


def test_loss_goes_down_and_accuracy_reaches_100(learned):
    result, _, _, _ = learned
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.5
    assert result.metrics["accuracy"] == 1.0 and result.metrics["macro_f1"] == 1.0
    assert {"loss", "train_seconds", "epochs_run", "steps", "best_epoch"} <= result.metrics.keys()
    assert result.metrics["epochs_run"] == 8


def test_fasttext_learns_too():
    spec = tiny_spec(epochs=8, optimizer={"name": "adam", "lr": 0.03}, model={"name": "fasttext", "dropout": 0.1})
    result = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 0.5
    assert result.metrics["accuracy"] == 1.0


def test_history_matches_epoch_record_and_progress_reports_each_epoch(learned):
    from app.spec import EpochRecord

    result, progress, _, _ = learned
    for h in result.history:
        EpochRecord.model_validate(h)
    epoch_ends = [p for p in progress if len(p["history"]) == p["epoch"]]
    assert [p["epoch"] for p in epoch_ends] == list(range(1, 9))
    last = progress[-1]
    assert last["stage"] == "training" and last["percent"] == 100.0 and last["step"] == last["total_steps"]
    assert {"total_epochs", "eta_seconds"} <= last.keys()


def test_same_seed_gives_identical_results():
    spec = tiny_spec(epochs=2, model={"name": "fasttext"})
    a = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    b = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_max_steps_stops_early():
    result = train(tiny_spec(epochs=50, max_steps=3), TEXTS, Y, label_names=LABELS, device=CPU)
    assert result.metrics["steps"] == 3 and result.metrics["epochs_run"] == 1


def test_should_stop_cancels():
    with pytest.raises(TrainingCancelled):
        train(tiny_spec(), TEXTS, Y, label_names=LABELS, device=CPU, should_stop=lambda: True)


def test_nan_loss_raises_diverged(monkeypatch):
    real_build = train_mod.build_model

    def nan_model(*args, **kwargs):
        model = real_build(*args, **kwargs)
        with torch.no_grad():
            model.head.bias.fill_(float("nan"))
        return model

    monkeypatch.setattr(train_mod, "build_model", nan_model)
    with pytest.raises(TrainingDiverged):
        train(tiny_spec(), TEXTS, Y, label_names=LABELS, device=CPU)


def test_unknown_label_is_rejected():
    with pytest.raises(ValueError, match="label_names"):
        train(tiny_spec(), TEXTS, Y, label_names=["animals"], device=CPU)


# -----------------------------------------------------------------------------
# pieces: split, optimizer groups, schedules, metrics, device


def test_stratified_split():
    labels = [0] * 50 + [1] * 30 + [2]  # class 2 has a single example
    train_idx, val_idx = stratified_split(labels, 0.2, seed=3)
    assert sorted([*train_idx, *val_idx]) == list(range(81))
    val_labels = np.asarray(labels)[val_idx]
    assert (val_labels == 0).sum() == 10 and (val_labels == 1).sum() == 6 and 80 in train_idx
    again = stratified_split(labels, 0.2, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip((train_idx, val_idx), again))


def test_stratified_split_keeps_one_validation_example():
    train_idx, val_idx = stratified_split([0, 0, 1, 1], 0.1, seed=0)
    assert len(val_idx) == 1 and len(train_idx) == 3


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = build_optimizer(model, OptimizerSpec(name="adamw", weight_decay=0.1))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.shape for p in decayed["params"]] == [(3, 4)]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3


def _lrs(spec: SchedulerSpec, *, epochs: int = 4, steps_per_epoch: int = 5, val_losses=None) -> list[float]:
    """Learning rate used at every step of a run driven as the training loop drives it."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_scheduler(opt, spec, total_steps=epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch)
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step_batch()
        sched.step_epoch(val_losses[epoch] if val_losses else 1.0)
    return lrs


def test_schedules():
    assert set(_lrs(SchedulerSpec(name="constant"))) == {1.0}
    step = _lrs(SchedulerSpec(name="step", step_size=2, gamma=0.5))
    assert step[0] == step[9] == 1.0 and step[10] == step[19] == 0.5
    cosine = _lrs(SchedulerSpec(name="cosine", warmup_ratio=0.2, min_lr_ratio=0.1))
    assert cosine[0] < cosine[3] and max(cosine) == pytest.approx(1.0) and cosine[-1] == pytest.approx(0.1, abs=0.02)
    linear = _lrs(SchedulerSpec(name="linear_warmup", warmup_ratio=0.25))
    assert linear.index(max(linear)) == 5 and linear[-1] < 0.1
    onecycle = _lrs(SchedulerSpec(name="onecycle"))
    assert onecycle[0] < 0.1 and max(onecycle) == pytest.approx(1.0, rel=0.05) and onecycle[-1] < 0.01
    plateau = _lrs(SchedulerSpec(name="plateau", patience=0, factor=0.5), val_losses=[1.0, 0.5, 0.6, 0.7])
    assert plateau[::5] == [1.0, 1.0, 1.0, 0.5]


def test_evaluate_logits():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    m = evaluate_logits(logits, np.array([0, 1, 1]))
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(2 / 3)  # class 0: P=1/2, R=1; class 1: P=1, R=1/2
    assert m["loss"] == pytest.approx((2 * np.log1p(np.exp(-2)) + np.log1p(np.exp(2))) / 3)


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU and resolve_device("cpu") == CPU
    with pytest.raises(CudaUnavailable):
        resolve_device("cuda")


# -----------------------------------------------------------------------------
# serving


def test_predictor_predicts_the_right_labels(learned):
    _, _, model_dir, _ = learned
    predictor = OnnxPredictor(model_dir, intra_op_threads=1)
    predictor.warm_up()
    assert predictor.labels == LABELS and predictor.providers == ["CPUExecutionProvider"]
    texts, labels = make_data(20, seed=99)  # unseen sentences from the same vocabularies
    out = predictor.predict(texts, top_k=5)
    assert [o["label"] for o in out] == labels
    for o in out:
        assert len(o["top_k"]) == 2  # capped at the number of labels
        assert o["top_k"][0] == {"label": o["label"], "score": o["score"]}
        assert o["top_k"][0]["score"] >= o["top_k"][1]["score"]
        assert sum(t["score"] for t in o["top_k"]) == pytest.approx(1.0, abs=1e-5)
    assert [len(o["top_k"]) for o in predictor.predict(["cat"], top_k=1)] == [1]


def test_predictor_proba_and_logits(learned):
    result, _, model_dir, _ = learned
    predictor = OnnxPredictor(model_dir)
    proba = predictor.predict_proba(["dog cat", "bus van", ""])
    assert proba.dtype == np.float32 and proba.shape == (3, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert predictor.predict_proba([]).shape == (0, 2)
    ids, mask = result.encoder.encode(["dog cat"])
    with torch.no_grad():
        expected = result.model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(predictor.logits(ids, mask), expected, atol=1e-4)


def test_choose_providers(monkeypatch):
    monkeypatch.setattr(predictor_mod.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(predictor_mod, "_gpu_visible", lambda: True)
    assert choose_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(predictor_mod, "_gpu_visible", lambda: False)
    assert choose_providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(predictor_mod.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(predictor_mod, "_gpu_visible", lambda: True)
    assert choose_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize("value", ["", "-1"])
def test_hidden_gpus_are_not_visible(monkeypatch, value):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert predictor_mod._gpu_visible() is False
