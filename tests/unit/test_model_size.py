"""The API's parameter estimate (app/model_size.py, no torch) equals the real torch models' count."""

from __future__ import annotations

import random

import pytest

from app.ml.tokenizer import TextEncoder, fit_tokenizer
from app.model_size import estimate_params, spec_params
from app.spec import ModelSpec, TokenizerSpec, TrainingSpec
from worker.ml.model import build_model

pytestmark = pytest.mark.unit

MODELS = [
    {"name": "textcnn"},
    {"name": "textcnn", "filter_sizes": [2, 7], "num_filters": 17, "embedding_dim": 24, "batch_norm": True},
    {"name": "fasttext"},
    {"name": "fasttext", "embedding_dim": 16, "ngram_buckets": 1_234, "batch_norm": True},
    {"name": "bigru"},
    {"name": "bigru", "num_layers": 3, "hidden_size": 20, "embedding_dim": 12, "pooling": "max", "batch_norm": True},
    {"name": "bigru", "num_layers": 2, "hidden_size": 9, "pooling": "mean"},
    {"name": "textcnn", "wide": True, "ngram_buckets": 5_000},
    {"name": "bigru", "wide": True},
]


@pytest.mark.parametrize("fields", MODELS, ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()))
@pytest.mark.parametrize("num_classes", [2, 7])
def test_estimate_equals_torch_parameter_count(fields, num_classes):
    spec = ModelSpec(**fields)
    model = build_model(spec, vocab_size=1_003, num_classes=num_classes)
    real = sum(p.numel() for p in model.parameters())
    assert estimate_params(spec, vocab_size=1_003, num_classes=num_classes) == real


@pytest.mark.parametrize("kind", ["word", "bpe", "wordpiece"])
def test_vocabulary_never_outgrows_the_spec_so_the_estimate_is_an_upper_bound(kind):
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)]
    spec = TokenizerSpec(kind=kind, vocab_size=200)
    encoder = TextEncoder(fit_tokenizer(texts, spec), max_length=64)
    assert encoder.vocab_size <= spec.vocab_size
    training = TrainingSpec(dataset_id="00000000-0000-0000-0000-000000000000", tokenizer=spec)
    built = build_model(training.model, vocab_size=encoder.vocab_size, num_classes=3)
    assert sum(p.numel() for p in built.parameters()) <= spec_params(training, num_classes=3)


def test_default_and_fast_specs_are_far_below_the_default_ceiling():
    from app.config import Settings

    ceiling = Settings.model_fields["max_model_params"].default
    for preset in ("default", "fast"):
        spec = TrainingSpec(dataset_id="00000000-0000-0000-0000-000000000000", preset=preset)
        assert spec_params(spec, num_classes=100) < ceiling / 10
