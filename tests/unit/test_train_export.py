"""Train tiny models on a learnable synthetic set, export to ONNX, check parity, and serve with OnnxPredictor."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError

import core.ml.predictor as predictor_mod
from core.ml.predictor import OnnxPredictor, choose_providers
from core.ml.tokenizer import PAD_ID, UNK_ID
from core.spec import DEFAULT_LR, AugmentSpec, ModelSpec, OptimizerSpec, SchedulerSpec, TrainingSpec
from worker.ml import train as train_mod
from worker.ml.export import ParityError, check_parity, export_onnx
from worker.ml.model import build_model
from worker.ml.train import (
    CudaUnavailable,
    SpecDataMismatch,
    TrainingCancelled,
    TrainingDiverged,
    augment_batch,
    build_optimizer,
    build_scheduler,
    class_weight_vector,
    evaluate_logits,
    predict_proba,
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
    model = {"embedding_dim": 16, "filter_sizes": [2, 3], "num_filters": 8, "ngram_buckets": 1000, "hidden_size": 8,
             **overrides.pop("model", {})}
    base = {"dataset_id": str(uuid.uuid4()), "epochs": 2, "batch_size": 8, "seed": 0, "device": "cpu",
            "early_stopping": None,  # every epoch runs: tests count them
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


@pytest.mark.parametrize(
    ("model", "optimizer", "scheduler", "extra"),
    [
        ({"name": "bigru"}, "adam", {"name": "multistep", "milestones": [1]}, {}),
        ({"name": "bigru", "pooling": "max", "num_layers": 2, "batch_norm": True}, "adamw", {"name": "exponential"},
         {"tokenizer": {"kind": "wordpiece", "vocab_size": 100, "max_length": 32}}),
        ({"name": "bigru", "pooling": "mean"}, "nesterov", {"name": "cosine"}, {"label_smoothing": 0.1}),
        ({"name": "textcnn", "max_norm": 3.0}, "adadelta", {"name": "multistep", "milestones": [1, 2]},
         {"tokenizer": {"kind": "bpe", "vocab_size": 100, "max_length": 32}, "class_weights": "balanced"}),
        ({"name": "fasttext"}, "sgd", {"name": "exponential", "gamma": 0.5},
         {"augment": {"deletion": 0.1, "swap": 0.1, "mask": 0.1}, "early_stopping": {"metric": "val_loss"}}),
        ({"name": "textcnn", "wide": True}, "adam", {"name": "cosine"}, {}),
        ({"name": "bigru", "wide": True, "ngram_buckets": 1_000}, "adagrad", {"name": "constant"}, {}),
    ],
)
def test_new_options_train_export_parity(tmp_path, model, optimizer, scheduler, extra):
    spec = tiny_spec(model=model, optimizer={"name": optimizer}, scheduler=scheduler, **extra)
    result = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    path = tmp_path / "model.onnx"
    export_onnx(result.model, path, vocab_size=result.encoder.vocab_size)
    parity = check_parity(result.model, path, result.encoder, TEXTS)
    assert parity["argmax_agreement"] == 1.0 and parity["max_abs_diff"] <= 1e-4
    # Served in a batch with a much longer text, a text scores as it does alone.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    alone = session.run(None, dict(zip(("input_ids", "attention_mask"), result.encoder.encode(TEXTS[:1]))))[0]
    batch = result.encoder.encode([TEXTS[0], " ".join(TEXTS[1:6])])
    together = session.run(None, dict(zip(("input_ids", "attention_mask"), batch)))[0]
    assert batch[0].shape[1] > 3 * len(TEXTS[0].split())
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)


def test_fast_preset_trains_exports_and_serves(tmp_path):
    spec = tiny_spec(preset="fast", epochs=3)
    assert spec.model.name == "fasttext" and spec.optimizer.name == "sgd" and spec.grad_clip is None
    result = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    assert not any(m.sparse for m in result.model.modules() if isinstance(m, torch.nn.Embedding))
    model_dir = write_artifacts(result, spec, tmp_path / "model")
    check_parity(result.model, model_dir / "model.onnx", result.encoder, TEXTS)
    texts, labels = make_data(20, seed=5)
    assert [p["label"] for p in OnnxPredictor(model_dir).predict(texts)] == labels


@pytest.mark.parametrize("fields", [{}, {"filter_sizes": [2, 7], "batch_norm": True},
                                    {"filter_sizes": [1], "wide": True}])
def test_merged_textcnn_computes_what_the_textcnn_does(fields):
    torch.manual_seed(0)
    cnn = build_model(ModelSpec(embedding_dim=16, num_filters=8, **fields), vocab_size=50, num_classes=3).eval()
    with torch.no_grad():  # non-trivial norm statistics and wide weights, so every part is compared
        for p in cnn.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        if fields.get("batch_norm"):
            cnn.norm.running_mean.uniform_(-1, 1)
            cnn.norm.running_var.uniform_(0.5, 2)
    merged = cnn.for_export()
    assert sum(isinstance(m, torch.nn.Conv1d) for m in merged.modules()) == 1
    lengths = torch.tensor([0, 1, 2, 5, 9, 12])  # empty, shorter than every width, ..., the full width
    mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
    ids = torch.randint(2, 50, (6, 12)) * mask
    with torch.no_grad():
        torch.testing.assert_close(merged(ids, mask), cnn(ids, mask), atol=1e-5, rtol=1e-5)
        one = torch.tensor([[7]]), torch.ones(1, 1, dtype=torch.long)  # one token, no padding at all
        torch.testing.assert_close(merged(*one), cnn(*one), atol=1e-5, rtol=1e-5)


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
    train_accuracy = [h["train_accuracy"] for h in result.history]
    assert all(0.0 <= a <= 1.0 for a in train_accuracy) and train_accuracy[-1] > train_accuracy[0]
    assert result.metrics["accuracy"] == 1.0 and result.metrics["macro_f1"] == 1.0
    assert {"loss", "train_seconds", "epochs_run", "steps", "best_epoch"} <= result.metrics.keys()
    assert result.metrics["epochs_run"] == 8


def test_fasttext_learns_too():
    spec = tiny_spec(epochs=8, optimizer={"name": "adam", "lr": 0.03}, model={"name": "fasttext", "dropout": 0.1})
    result = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 0.5
    assert result.metrics["accuracy"] == 1.0


def test_history_matches_epoch_record_and_progress_reports_each_epoch(learned):
    from core.spec import EpochRecord

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


def test_an_exploding_finite_loss_raises_diverged_naming_the_epoch_and_the_loss(monkeypatch):
    real_build = train_mod.build_model

    def loud_model(*args, **kwargs):
        model = real_build(*args, **kwargs)
        with torch.no_grad():
            model.head.weight.mul_(1e6)  # logits of ~1e6: a finite loss far above where training starts
        return model

    monkeypatch.setattr(train_mod, "build_model", loud_model)
    with pytest.raises(TrainingDiverged, match=r"reached \d.*e\+0\d in epoch 1, over 100 x ln\(2 classes\)"):
        train(tiny_spec(optimizer={"name": "sgd", "lr": 1e-9}), TEXTS, Y, label_names=LABELS, device=CPU)


def test_a_loss_that_learns_is_not_divergence():
    train_mod.check_divergence(60.0, 2, "in epoch 1")  # under 100 x ln 2 = 69.3
    with pytest.raises(TrainingDiverged, match="in epoch 3"):
        train_mod.check_divergence(70.0, 2, "in epoch 3")
    with pytest.raises(TrainingDiverged, match="nan"):
        train_mod.check_divergence(float("nan"), 5, "at step 9 (epoch 1)")


def test_parity_tolerance_scales_with_the_logits(tmp_path):
    # the network alone: a blend's outputs are log-probabilities, whatever the network's scale
    result = train(tiny_spec(max_steps=1, model={"tfidf": None}), TEXTS, Y, label_names=LABELS, device=CPU)
    with torch.no_grad():
        result.model.head.weight.mul_(1e6)
        result.model.head.bias.mul_(1e6)
    export_onnx(result.model, tmp_path / "model.onnx", vocab_size=result.encoder.vocab_size)
    # float32 rounding of logits near 1e6 is far above an absolute 1e-4, and still a faithful export
    parity = check_parity(result.model, tmp_path / "model.onnx", result.encoder, TEXTS)
    assert parity["argmax_agreement"] == 1.0 and 1e-4 < parity["max_abs_diff"] <= parity["tolerance"]
    with torch.no_grad():
        result.model.head.bias += torch.tensor([1e5, -1e5])  # torch now disagrees with the file, at scale
    with pytest.raises(ParityError, match="^onnxruntime disagrees with torch: {") as caught:
        check_parity(result.model, tmp_path / "model.onnx", result.encoder, TEXTS)
    assert str(caught.value).count("onnxruntime disagrees") == 1


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


def test_the_result_carries_the_validation_rows_the_model_was_selected_on(learned):
    """The worker checks parity and evaluates on these rows: they must be train()'s own validation split."""
    result, _, _, spec = learned
    _, val_idx = stratified_split([LABELS.index(y) for y in Y], spec.validation_split, spec.seed)
    assert result.val_texts == [TEXTS[i] for i in val_idx]
    assert result.val_y == [LABELS.index(Y[i]) for i in val_idx]
    assert len(result.val_texts) == result.metrics["val_examples"]
    # The selection scores are the model's on exactly these rows.
    proba = predict_proba(result.model, result.encoder, result.val_texts, CPU)
    assert float((proba.argmax(axis=1) == np.asarray(result.val_y)).mean()) == result.metrics["accuracy"]


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


# -----------------------------------------------------------------------------
# padding independence, max-norm, sparse SGD, predict_proba, provenance


@pytest.mark.parametrize("model", [{"name": "textcnn"}, {"name": "fasttext"}, {"name": "bigru"},
                                   {"name": "bigru", "pooling": "max", "num_layers": 2},
                                   {"name": "bigru", "pooling": "mean"}])
def test_logits_do_not_depend_on_batch_padding(model):
    torch.manual_seed(0)
    net = build_model(ModelSpec(embedding_dim=16, hidden_size=8, num_filters=8, ngram_buckets=1000, **model),
                      vocab_size=50, num_classes=3).eval()
    short = torch.tensor([[5, 6, 7, 8, 9]])
    batch = torch.zeros((3, 60), dtype=torch.long)
    batch[0, :5] = short[0]
    batch[1] = torch.arange(60) % 48 + 2  # a much longer text sets the batch width
    mask = (batch != PAD_ID).long()  # row 2 is empty: all padding
    with torch.no_grad():
        alone = net(short, torch.ones_like(short))
        together = net(batch, mask)
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=0)
    assert torch.isfinite(together).all()


def test_max_norm_caps_output_weight_rows():
    spec = tiny_spec(epochs=3, model={"max_norm": 0.05}, optimizer={"name": "adam", "lr": 0.05})
    result = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    norms = result.model.head.weight.norm(dim=1)
    assert norms.max() <= 0.05 + 1e-6 and norms.min() > 0.04  # pushed against the cap by a large lr


@pytest.mark.parametrize(("optimizer", "grad_clip"), [("sgd", None), ("sgd", 0.5), ("adagrad", 0.5)])
def test_sparse_embedding_gradients_match_dense_ones(monkeypatch, optimizer, grad_clip):
    spec = tiny_spec(model={"name": "fasttext"}, optimizer={"name": optimizer, "lr": 2.0}, grad_clip=grad_clip)
    assert train_mod._sparse_embeddings(build_model(spec.model, vocab_size=50, num_classes=2), spec.optimizer)
    sparse = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    monkeypatch.setattr(train_mod, "_sparse_embeddings", lambda model, spec: [])
    dense = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    for (name, a), (_, b) in zip(sparse.model.state_dict().items(), dense.model.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_predict_proba(learned):
    result, _, _, _ = learned
    result.model.train()
    texts = ["dog cat", "bus van", ""] * 300  # more than one EVAL_BATCH
    proba = predict_proba(result.model, result.encoder, texts, CPU)
    assert result.model.training  # mode restored
    result.model.eval()
    assert proba.dtype == np.float32 and proba.shape == (900, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert proba[0].argmax() == 0 and proba[1].argmax() == 1
    ids, mask = result.encoder.encode(texts[:3])
    with torch.no_grad():
        expected = torch.softmax(result.model(torch.from_numpy(ids), torch.from_numpy(mask)), dim=1).numpy()
    np.testing.assert_allclose(proba[:3], expected, atol=1e-6)
    assert predict_proba(result.model, result.encoder, [], "cpu").shape == (0, 2)


def test_provenance_and_reproducible_metrics():
    spec = tiny_spec(epochs=3, augment={"deletion": 0.2, "swap": 0.2, "mask": 0.2}, model={"name": "bigru"},
                     scheduler={"name": "exponential"})
    a = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    b = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    untimed = lambda m: {k: v for k, v in m.items() if not k.endswith("_seconds")}  # noqa: E731
    assert untimed(a.metrics) == untimed(b.metrics)
    assert [{**h, "seconds": 0} for h in a.history] == [{**h, "seconds": 0} for h in b.history]
    prov = a.provenance
    assert prov == a.metrics["provenance"] and prov["seed"] == 0 and prov["device"] == "cpu"
    assert prov["torch"] == torch.__version__ and prov["numpy"] == np.__version__
    assert prov["tokenizers"] and prov["onnx"] == onnx.__version__ and prov["cuda"] is None and prov["gpu"] is None
    json.dumps(a.metrics)  # stored as JSON by the worker


# -----------------------------------------------------------------------------
# schedules, label smoothing, class weights, early stopping


def test_multistep_and_exponential_schedules():
    multistep = _lrs(SchedulerSpec(name="multistep", milestones=[1, 3], gamma=0.1))
    assert multistep[::5] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert len(set(multistep[:5])) == 1  # per epoch, not per step
    exponential = _lrs(SchedulerSpec(name="exponential"))
    assert exponential[::5] == pytest.approx([1.0, 0.9, 0.81, 0.729])
    assert SchedulerSpec(name="exponential", gamma=0.5).gamma == 0.5


def test_label_smoothing_and_class_weights_reach_the_loss(monkeypatch):
    seen = []
    real = train_mod.F.cross_entropy

    def spy(logits, target, **kwargs):
        seen.append(kwargs)
        return real(logits, target, **kwargs)

    monkeypatch.setattr(train_mod.F, "cross_entropy", spy)
    spec = tiny_spec(max_steps=1, label_smoothing=0.2, class_weights={"vehicles": 3.0})
    train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
    assert seen[0]["label_smoothing"] == 0.2 and seen[0]["weight"].tolist() == [1.0, 3.0]
    seen.clear()
    train(tiny_spec(max_steps=1), TEXTS, Y, label_names=LABELS, device=CPU)
    assert seen[0]["label_smoothing"] == 0.0 and seen[0]["weight"] is None


def test_label_smoothing_softens_confidence():
    def run(**extra):
        # The network alone: smoothing shapes its targets, not the TF-IDF model's.
        spec = tiny_spec(epochs=10, optimizer={"name": "adam", "lr": 0.05}, model={"dropout": 0.1, "tfidf": None},
                         early_stopping={"metric": "val_loss", "patience": 100}, **extra)
        result = train(spec, TEXTS, Y, label_names=LABELS, device=CPU)
        confidence = float(predict_proba(result.model, result.encoder, TEXTS, CPU).max(axis=1).mean())
        return confidence, min(h["train_loss"] for h in result.history)

    sharp, sharp_loss = run()
    soft, soft_loss = run(label_smoothing=0.5)
    # Smoothing 0.5 over 2 classes makes the target (0.75, 0.25): its cross-entropy cannot go below that
    # distribution's entropy, 0.562, and the model stays far less sure than the unsmoothed one.
    floor = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert soft_loss >= floor - 1e-4 and sharp_loss < 0.1
    assert sharp > 0.99 and soft < 0.9


def test_class_weight_vector():
    y = np.array([0] * 6 + [1] * 3 + [2])
    np.testing.assert_allclose(class_weight_vector("balanced", ["a", "b", "c"], y), [10 / 18, 10 / 9, 10 / 3])
    np.testing.assert_allclose(class_weight_vector({"c": 4.0}, ["a", "b", "c"], y), [1.0, 1.0, 4.0])
    assert class_weight_vector(None, ["a", "b", "c"], y) is None


def test_class_weights_for_unknown_labels_fail_before_training():
    spec = tiny_spec(class_weights={"animals": 2.0, "plants": 3.0})
    with pytest.raises(SpecDataMismatch, match="plants") as info:
        train(spec, TEXTS, Y, label_names=LABELS, device=CPU, on_progress=lambda p: pytest.fail("trained"))
    assert isinstance(info.value, ValueError)


def _scripted_run(monkeypatch, spec: TrainingSpec, script: list[dict]):
    """Train with evaluate_logits replaced by `script` (one metrics dict per epoch); return the result and
    the model's weights as they were at each epoch's evaluation."""
    models, snapshots, epoch = [], [], iter(script)
    real_build = train_mod.build_model

    def build(*args, **kwargs):
        models.append(real_build(*args, **kwargs))
        return models[-1]

    def evaluate(logits, y):
        snapshots.append({k: v.clone() for k, v in models[-1].state_dict().items()})
        return dict(next(epoch))

    monkeypatch.setattr(train_mod, "build_model", build)
    monkeypatch.setattr(train_mod, "evaluate_logits", evaluate)
    return train(spec, TEXTS, Y, label_names=LABELS, device=CPU), snapshots


SCRIPT = [  # epoch: macro-F1 peaks at 2, loss bottoms at 3, accuracy creeps up by < 0.01 after epoch 1
    {"macro_f1": 0.5, "accuracy": 0.800, "loss": 0.30},
    {"macro_f1": 0.9, "accuracy": 0.801, "loss": 0.60},
    {"macro_f1": 0.8, "accuracy": 0.802, "loss": 0.20},
    {"macro_f1": 0.7, "accuracy": 0.803, "loss": 0.25},
    {"macro_f1": 0.6, "accuracy": 0.804, "loss": 0.26},
    {"macro_f1": 0.5, "accuracy": 0.805, "loss": 0.27},
]


@pytest.mark.parametrize(
    ("early_stopping", "best_epoch", "epochs_run"),
    [
        (None, 2, 6),  # no early stopping: all epochs, best by macro-F1
        ({"metric": "val_macro_f1", "patience": 2}, 2, 5),  # epochs 3 and 4 tolerated, 5 stops
        ({"metric": "val_loss", "patience": 1}, 3, 5),
        ({"metric": "val_loss", "patience": 0}, 1, 2),  # the first epoch that does not improve stops
        ({"metric": "val_accuracy", "patience": 1, "min_delta": 0.01}, 1, 3),  # +0.001/epoch is no improvement
        ({"metric": "val_accuracy", "patience": 10}, 6, 6),
    ],
)
def test_early_stopping_restores_the_best_epoch_by_its_metric(monkeypatch, early_stopping, best_epoch, epochs_run):
    # The network alone: the scripted scores are its epochs' (a blend would be scored once more at the end).
    spec = tiny_spec(epochs=6, early_stopping=early_stopping, optimizer={"name": "adam", "lr": 0.01},
                     model={"tfidf": None})
    result, snapshots = _scripted_run(monkeypatch, spec, SCRIPT)
    assert result.metrics["best_epoch"] == best_epoch and result.metrics["epochs_run"] == epochs_run
    assert result.metrics["stopped_early"] == (epochs_run < 6)
    assert result.metrics["selection_metric"] == (early_stopping or {}).get("metric", "val_macro_f1")
    assert result.metrics["macro_f1"] == SCRIPT[best_epoch - 1]["macro_f1"]
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, snapshots[best_epoch - 1][name]), name


# -----------------------------------------------------------------------------
# augmentation


def _ragged(rows: int = 40, width: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, width + 1, size=rows)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(2, 30, size=(rows, width)), PAD_ID)
    return ids, mask


@pytest.mark.parametrize("spec", [AugmentSpec(deletion=0.3), AugmentSpec(swap=0.5), AugmentSpec(mask=0.3),
                                  AugmentSpec(deletion=0.5, swap=0.5, mask=0.5)])
def test_augment_batch_keeps_padding_and_is_seeded(spec):
    ids, mask = _ragged()
    out_ids, out_mask = augment_batch(ids, mask, spec, np.random.default_rng(7))
    again = augment_batch(ids, mask, spec, np.random.default_rng(7))
    assert np.array_equal(out_ids, again[0]) and np.array_equal(out_mask, again[1])
    assert not np.array_equal(out_ids, augment_batch(ids, mask, spec, np.random.default_rng(8))[0])
    assert not np.array_equal(out_ids, ids)  # something changed
    assert out_ids.shape == ids.shape and out_mask.dtype == mask.dtype
    lengths, new_lengths = mask.sum(axis=1), out_mask.sum(axis=1)
    # still right-padded, padding is PAD, real tokens are not, and only deletion shortens a text
    assert np.array_equal(out_mask, (np.arange(ids.shape[1]) < new_lengths[:, None]).astype(np.int64))
    assert (out_ids[out_mask == 0] == PAD_ID).all() and (out_ids[out_mask == 1] != PAD_ID).all()
    assert ((new_lengths >= 1) | (lengths == 0)).all() and (new_lengths <= lengths).all()
    if spec.deletion == 0:
        assert np.array_equal(new_lengths, lengths)
    for row, new in zip(ids, out_ids):
        kept = [t for t in new if t not in (PAD_ID, UNK_ID)]
        source = list(row[row != PAD_ID])
        assert all(kept.count(t) <= source.count(t) for t in kept)  # a sub-multiset of the row's own tokens
        if spec == AugmentSpec(swap=0.5):
            assert sorted(kept) == sorted(source)


def test_augmentation_changes_training_but_not_shuffling_or_init():
    base = tiny_spec(max_steps=1)
    plain = train(base, TEXTS, Y, label_names=LABELS, device=CPU)
    noisy = train(tiny_spec(max_steps=1, augment={"mask": 0.5}), TEXTS, Y, label_names=LABELS, device=CPU)
    assert plain.history[0]["train_loss"] != noisy.history[0]["train_loss"]
    assert plain.encoder.tokenizer.get_vocab() == noisy.encoder.tokenizer.get_vocab()


# -----------------------------------------------------------------------------
# spec: new fields, bad combinations, presets


@pytest.mark.parametrize(("fields", "loc"), [
    ({"scheduler": {"name": "multistep"}}, ("scheduler",)),
    ({"scheduler": {"name": "multistep", "milestones": [4, 2]}}, ("scheduler",)),
    ({"scheduler": {"name": "multistep", "milestones": [2, 2]}}, ("scheduler",)),
    ({"scheduler": {"name": "multistep", "milestones": [0, 2]}}, ("scheduler", "milestones", 0)),
    ({"scheduler": {"name": "exponential", "gamma": 1.0}}, ("scheduler", "gamma")),
    ({"early_stopping": {"patience": -1}}, ("early_stopping", "patience")),
    ({"early_stopping": {"metric": "val_f1"}}, ("early_stopping", "metric")),
    ({"class_weights": {"animals": 0.0}}, ("class_weights",)),
    ({"class_weights": {"animals": -1.0}}, ("class_weights",)),
    ({"class_weights": {}}, ("class_weights",)),
    ({"class_weights": "inverse"}, ("class_weights",)),
    ({"label_smoothing": 0.6}, ("label_smoothing",)),
    ({"augment": {}}, ("augment",)),
    ({"augment": {"mask": 0.9}}, ("augment", "mask")),
    ({"augment": {"crop": 0.1}}, ("augment", "crop")),
    ({"model": {"name": "bigru", "num_layers": 5}}, ("model", "num_layers")),
    ({"model": {"name": "bigru", "pooling": "sum"}}, ("model", "pooling")),
    ({"model": {"max_norm": 0.0}}, ("model", "max_norm")),
    ({"tokenizer": {"kind": "unigram"}}, ("tokenizer", "kind")),
    ({"preset": "turbo"}, ("preset",)),
])
def test_bad_new_fields_are_validation_errors(fields, loc):
    with pytest.raises(ValidationError) as info:
        TrainingSpec.model_validate({"dataset_id": str(uuid.uuid4()), **fields})
    assert any(tuple(e["loc"][: len(loc)]) == loc for e in info.value.errors()), info.value.errors()


def test_new_fields_default_to_off():
    spec = TrainingSpec(dataset_id=uuid.uuid4())
    assert spec.preset == "default" and spec.label_smoothing == 0.0 and spec.model.max_norm is None
    assert spec.class_weights is spec.augment is None
    assert spec.tokenizer.kind == "auto" and spec.model.name == "textcnn"
    assert spec == TrainingSpec(dataset_id=spec.dataset_id, preset="default")


def test_fast_preset_fills_defaults_under_user_fields():
    dataset_id = str(uuid.uuid4())
    fast = TrainingSpec.model_validate({"dataset_id": dataset_id, "preset": "fast"})
    assert fast.model.name == "fasttext" and fast.model.dropout == 0.0 and fast.optimizer.name == "sgd"
    assert fast.optimizer.lr > 1.0 and fast.epochs <= 10 and fast.grad_clip is None
    mine = TrainingSpec.model_validate({"dataset_id": dataset_id, "preset": "fast", "epochs": 3,
                                        "model": {"embedding_dim": 32}, "optimizer": {"lr": 0.5}, "grad_clip": 1.0})
    assert mine.epochs == 3 and mine.model.embedding_dim == 32 and mine.optimizer.lr == 0.5 and mine.grad_clip == 1.0
    assert mine.model.name == "fasttext" and mine.model.ngram_buckets == fast.model.ngram_buckets  # rest kept
    assert mine.optimizer.name == "sgd" and mine.scheduler == fast.scheduler
    # Naming another method drops the preset's settings for that section (SGD's lr is no rate for Adam).
    adam = TrainingSpec.model_validate({"dataset_id": dataset_id, "preset": "fast", "optimizer": {"name": "adam"}})
    assert adam.optimizer.lr == DEFAULT_LR["adam"] and adam.model.name == "fasttext"
    # The stored spec re-validates to itself, preset included.
    assert TrainingSpec.model_validate(mine.model_dump(mode="json")) == mine and mine.preset == "fast"


def test_bigru_recurrence_stays_fp32_under_autocast():
    torch.manual_seed(0)
    net = build_model(ModelSpec(name="bigru", embedding_dim=16, hidden_size=8), vocab_size=50, num_classes=3).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [3, 4, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        fp32 = net(ids, (ids != PAD_ID).long())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = net(ids, (ids != PAD_ID).long())
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed.float(), fp32, atol=0.05, rtol=0.05)  # only the linear layers rounded


def test_length_bucketing_keeps_every_row_once_and_pads_less():
    from worker.ml.train import BUCKET_BATCHES, epoch_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=BUCKET_BATCHES * 8 * 3 + 5)  # short, varied texts: a partial last chunk
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))

    def batches(bucket: bool, seed: int = 1) -> list[torch.Tensor]:
        return epoch_batches(order, lengths, 8, merge_single=True, bucket=bucket,
                             generator=torch.Generator().manual_seed(seed))

    plain, bucketed = batches(False), batches(True)
    assert len(bucketed) == len(plain)  # the same steps per epoch, so schedules and progress are unchanged
    assert sorted(torch.cat(bucketed).tolist()) == list(range(len(lengths)))
    assert all(len(b) >= 2 for b in bucketed)  # BatchNorm's rule: no batch of one

    def padded(bs: list[torch.Tensor]) -> int:
        return sum(int(lengths[b.numpy()].max()) * len(b) for b in bs)

    assert padded(bucketed) < 0.6 * padded(plain)
    assert [b.tolist() for b in batches(True)] == [b.tolist() for b in bucketed]  # seeded: reproducible
    assert [b.tolist() for b in batches(True, seed=2)] != [b.tolist() for b in bucketed]  # batch order shuffled


def test_a_tie_of_the_selection_metric_goes_to_the_lower_validation_loss(learned):
    result, _, _, _ = learned
    history = result.history
    top = max(h["val_macro_f1"] for h in history)
    assert sum(h["val_macro_f1"] == top for h in history) > 1  # the toy validation set saturates: ties happen
    tied = [h for h in history if h["val_macro_f1"] == top]
    assert result.metrics["best_epoch"] == min(tied, key=lambda h: h["val_loss"])["epoch"]
