"""model.name encoder: a tiny random BERT the tests build (tests/tiny_bert.py) fine-tuned by worker.ml.train,
exported to ONNX, checked for parity and served by OnnxPredictor with the base model's own tokenizer.json."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from core.limits import DataShape, EncoderShape, estimate_params, estimate_training_bytes
from core.ml.predictor import OnnxPredictor
from core.ml.tokenizer import TextEncoder
from core.spec import TrainingSpec
from tests.helpers import tiny_dataset_csv
from tests.tiny_bert import build_tiny_bert
from worker.ml.encoder import EncoderClassifier, base_text_encoder
from worker.ml.export import check_parity, export_onnx
from worker.ml.train import build_optimizer, predict_proba, train

DATASET = str(uuid.uuid4())


def spec(**fields) -> TrainingSpec:
    return TrainingSpec.model_validate({"dataset_id": DATASET, **fields})


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="module")
def rows() -> tuple[list[str], list[str]]:
    reader = csv.DictReader(io.StringIO(tiny_dataset_csv().decode()))
    pairs = [(r["text"], r["label"]) for r in reader]
    return [t for t, _ in pairs], [lab for _, lab in pairs]


@pytest.fixture(scope="module")
def trained(bert: Path, rows):
    texts, labels = rows
    training = spec(preset="accurate", epochs=8, optimizer={"name": "adamw", "lr": 3e-3, "layer_decay": 0.9},
                    batch_size=8, seed=0, early_stopping=None)
    result = train(training, texts, labels, label_names=["cooking", "sports"], device=torch.device("cpu"),
                   base_model_dir=bert)
    return training, result


# ---------------------------------------------------------------------------------------------------------
# the spec


def test_the_accurate_preset_is_an_encoder_fine_tune():
    s = spec(preset="accurate")
    assert (s.model.name, s.model.pooling, s.model.tfidf, s.model.base_model) == ("encoder", "mean", None, None)
    assert (s.optimizer.name, s.optimizer.lr, s.optimizer.weight_decay) == ("adamw", 1e-4, 0.01)
    assert (s.scheduler.name, s.scheduler.warmup_ratio, s.grad_clip, s.epochs) == ("linear_warmup", 0.1, 1.0, 4)
    assert s.tokenizer.max_length == 128 and s.model.head_init == "probe"
    # the user's fields win over the preset's
    assert spec(preset="accurate", model={"pooling": "cls", "base_model": "minilm"}).model.pooling == "cls"
    assert spec(model={"name": "encoder"}).model.tfidf is None  # an encoder alone unless a blend is asked for


@pytest.mark.parametrize("fields", [
    {"model": {"name": "encoder", "pooling": "attention"}},
    {"model": {"name": "bigru", "pooling": "cls"}},
    {"model": {"name": "textcnn", "base_model": "minilm"}},
    {"model": {"name": "encoder", "wide": True}},
    {"model": {"name": "textcnn", "head_init": "probe"}},
    {"preset": "accurate", "augment": {"deletion": 0.1}},
])
def test_settings_that_do_not_apply_to_the_model_are_refused(fields):
    with pytest.raises(ValidationError):
        spec(**fields)


# ---------------------------------------------------------------------------------------------------------
# tokenizer


def test_the_base_tokenizer_adds_its_special_tokens_and_keeps_sep_when_it_cuts(bert: Path):
    encoder = base_text_encoder(bert, 8)
    assert encoder.special_tokens and encoder.pad_id == 0
    ids, mask = encoder.encode(["the team won", "the team won the match in the final minute again and again"])
    assert ids.shape == (2, 8)
    assert ids[0, 0] == 2 and ids[0, mask[0].sum() - 1] == 3  # [CLS] ... [SEP]
    assert ids[1, 0] == 2 and ids[1, -1] == 3 and mask[1].all()  # cut at 8 with its [SEP] kept
    # the cut is written into tokenizer.json, so the file alone encodes as the model was trained
    saved = TextEncoder.from_json(encoder.to_json(), 128)
    assert saved.max_length == 8 and np.array_equal(saved.encode(["the team won"])[0], ids[:1, : mask[0].sum()])


def test_texts_are_cut_at_the_positions_the_model_has(bert: Path):
    assert base_text_encoder(bert, 4096).max_length == json.loads((bert / "config.json").read_text())[
        "max_position_embeddings"]


# ---------------------------------------------------------------------------------------------------------
# model and optimizer


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_a_text_scores_the_same_whatever_its_batch_pads_it_to(bert: Path, pooling: str):
    torch.manual_seed(0)
    model = EncoderClassifier(spec(model={"name": "encoder", "pooling": pooling}).model, bert, 3).eval()
    encoder = base_text_encoder(bert, 64)
    alone = encoder.encode(["the team won"])
    batch = encoder.encode(["the team won", "bake the bread for forty minutes with fresh basil and garlic"])
    with torch.no_grad():
        a = model(*map(torch.from_numpy, alone))
        b = model(*map(torch.from_numpy, batch))
    assert torch.allclose(a[0], b[0], atol=1e-5)


def test_layer_decay_gives_each_layer_its_rate(bert: Path):
    model = EncoderClassifier(spec(model={"name": "encoder"}).model, bert, 2)
    groups = model.layer_groups()
    assert len(groups) == 4  # embeddings, 2 layers, head (+ pooler)
    assert sum(p.numel() for g in groups for p in g) == sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, spec(optimizer={"name": "adamw", "lr": 1e-3, "layer_decay": 0.5}).optimizer)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert rate[id(model.head.weight)] == pytest.approx(1e-3)
    assert rate[id(model.encoder.encoder.layer[1].output.dense.weight)] == pytest.approx(5e-4)
    assert rate[id(model.encoder.encoder.layer[0].output.dense.weight)] == pytest.approx(2.5e-4)
    assert rate[id(model.encoder.embeddings.word_embeddings.weight)] == pytest.approx(1.25e-4)
    # decay on matrices only, as for the other models
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay[id(model.head.bias)] == 0.0 and decay[id(model.head.weight)] == 0.05


# ---------------------------------------------------------------------------------------------------------
# train -> export -> parity -> serve


def test_fine_tuning_learns_the_tiny_dataset(trained, rows):
    # The tiny model is random and its WordPiece vocabulary is trained anew per session (tokenizers' trainer is
    # not deterministic in its ties), so the bars leave room: 8 validation rows, 2 labels.
    training, result = trained
    assert result.metrics["epochs_run"] == 8 and result.metrics["accuracy"] >= 0.75
    texts, labels = rows
    proba = predict_proba(result.model, result.encoder, texts, torch.device("cpu"))
    assert np.mean(np.array(["cooking", "sports"])[proba.argmax(axis=1)] == np.array(labels)) >= 0.9
    assert isinstance(result.model, EncoderClassifier) and result.encoder.special_tokens


def test_the_exported_encoder_matches_torch_and_serves_without_it(trained, tmp_path: Path):
    training, result = trained
    export_onnx(result.model, tmp_path / "model.onnx", vocab_size=result.encoder.vocab_size)
    parity = check_parity(result.model, tmp_path / "model.onnx", result.encoder, result.val_texts)
    assert parity["argmax_agreement"] == 1.0 and parity["max_abs_diff"] <= parity["tolerance"]
    result.encoder.save(tmp_path / "tokenizer.json")
    (tmp_path / "labels.json").write_text(json.dumps(["cooking", "sports"]))
    (tmp_path / "spec.json").write_text(training.model_dump_json())
    predictor = OnnxPredictor(tmp_path)
    texts = ["the striker scored a late goal", "roast the garlic slowly", "", "héllo wörld 😀 " * 40]
    served = predictor.predict_proba(texts)
    expected = np.asarray(predict_proba(result.model, result.encoder, texts, torch.device("cpu")))
    assert np.allclose(served, expected, atol=1e-5)
    assert [p["label"] for p in predictor.predict(texts[:2])] == ["sports", "cooking"]


# ---------------------------------------------------------------------------------------------------------
# ceilings


def test_size_and_memory_estimates_come_from_the_base_model():
    base = EncoderShape(num_parameters=22_713_216, hidden_size=384, num_layers=6)
    model = spec(preset="accurate").model
    assert estimate_params(model, vocab_size=30_000, num_classes=6, base=base) == 22_713_216 + 384 * 6 + 6
    data = DataShape(rows=5_000, records_bytes=400_000, longest_words=40, longest_chars=200)
    small = estimate_training_bytes(spec(preset="accurate"), data, num_classes=6, base=base)
    large = estimate_training_bytes(spec(preset="accurate", batch_size=256), data, num_classes=6, base=base)
    assert large["activations"] > 7 * small["activations"]
    # the probe's features of every row, in float32 and float64, and its fit's four float64 arrays per class
    random_head = estimate_training_bytes(spec(preset="accurate", model={"head_init": "random"}), data,
                                          num_classes=6, base=base)
    assert small["data"] - random_head["data"] == 5_000 * (384 * 12 + 6 * 32)
    # AdamW: weights, gradients, two moments and the best epoch's copy
    assert small["parameters"] == (22_713_216 + 384 * 6 + 6) * 4 * 5
    with pytest.raises(ValueError):
        estimate_training_bytes(spec(preset="accurate"), data, num_classes=6)


def test_a_probed_head_starts_at_what_the_frozen_features_classify(bert: Path, rows):
    """head_init probe fits the head on the frozen model's features before any step; random starts near uniform.
    A rate of 1e-12 leaves the one step's model as it started."""
    texts, labels = rows
    frozen = {"preset": "accurate", "max_steps": 1, "optimizer": {"name": "adamw", "lr": 1e-12}, "batch_size": 8,
              "early_stopping": None}
    run = {"label_names": ["cooking", "sports"], "device": torch.device("cpu"), "base_model_dir": bert}
    for head_init in ("probe", "random"):
        result = train(spec(model={"head_init": head_init}, **frozen), texts, labels, **run)
        proba = predict_proba(result.model, result.encoder, texts, torch.device("cpu"))
        accuracy = np.mean(np.array(["cooking", "sports"])[proba.argmax(axis=1)] == np.array(labels))
        if head_init == "probe":
            assert accuracy >= 0.85 and proba.max(axis=1).mean() > 0.7
        else:
            assert proba.max(axis=1).mean() < 0.6


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def test_a_fine_tune_killed_after_an_epoch_resumes_where_the_whole_run_ends(bert: Path, rows, tmp_path: Path):
    from tests.unit.test_checkpoint import Crash, CrashingStore, assert_same_run
    from worker.ml.checkpoint import CheckpointStore, fingerprint

    texts, labels = rows
    training = spec(preset="accurate", epochs=3, batch_size=16, optimizer={"name": "adamw", "lr": 1e-3,
                                                                           "layer_decay": 0.8})
    run = {"label_names": ["cooking", "sports"], "device": torch.device("cpu"), "base_model_dir": bert}
    whole = train(training, texts, labels, **run)
    fp = fingerprint(training.model_dump(mode="json"), "data")
    with pytest.raises(Crash):
        train(training, texts, labels, checkpoint=CrashingStore(tmp_path / "ckpt", fp, after=1), **run)
    resumed = train(training, texts, labels, checkpoint=CheckpointStore(tmp_path / "ckpt", fp), **run)
    assert resumed.metrics["resumed_from_epoch"] == 1
    assert_same_run(whole, resumed)


@pytest.mark.parametrize(("optimizer", "scheduler"), [
    ("sgd", "step"), ("momentum", "cosine"), ("nesterov", "onecycle"), ("adam", "constant"),
    ("rmsprop", "exponential"), ("adagrad", "plateau"), ("adadelta", "multistep"),
])
def test_every_optimizer_and_schedule_fine_tunes_an_encoder(bert: Path, rows, optimizer: str, scheduler: str):
    """The spec's methods all run on an encoder (SGD and Adagrad train its embeddings with sparse gradients)."""
    texts, labels = rows
    training = spec(preset="accurate", epochs=2, batch_size=16, optimizer={"name": optimizer},
                    scheduler={"name": scheduler, **({"milestones": [1]} if scheduler == "multistep" else {})})
    result = train(training, texts, labels, label_names=["cooking", "sports"], device=torch.device("cpu"),
                   base_model_dir=bert)
    assert result.metrics["epochs_run"] >= 1 and np.isfinite(result.metrics["loss"])
