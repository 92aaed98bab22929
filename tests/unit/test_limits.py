"""The API's parameter estimate (core/limits.py, no torch) equals the real torch models' count."""

from __future__ import annotations

import random

import pytest

from core.limits import DataShape, estimate_params, estimate_training_bytes, spec_params
from core.ml.tokenizer import TextEncoder, fit_tokenizer
from core.spec import ModelSpec, TokenizerSpec, TrainingSpec
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
    from core.config import Settings

    ceiling = Settings.model_fields["max_model_params"].default
    for preset in ("default", "fast"):
        spec = TrainingSpec(dataset_id="00000000-0000-0000-0000-000000000000", preset=preset)
        assert spec_params(spec, num_classes=100) < ceiling / 10


# A dataset of 1,000 texts of 5,000 words, and one of TREC's shape (5,000 questions of at most 40 words).
LONG = DataShape(rows=1_000, records_bytes=30_000_000, longest_words=5_000, longest_chars=25_000)
SHORT = DataShape(rows=5_000, records_bytes=300_000, longest_words=40, longest_chars=200)
MIB = 2**20


def memory(fields: dict, data: DataShape = LONG, num_classes: int = 4) -> int:
    spec = TrainingSpec(dataset_id="00000000-0000-0000-0000-000000000000", **fields)
    return sum(estimate_training_bytes(spec, data, num_classes=num_classes).values())


def test_the_largest_spec_is_far_over_the_default_memory_ceiling_and_the_presets_far_under():
    from core.config import Settings

    ceiling = Settings.model_fields["training_memory_limit_mb"].default * MIB
    huge = {"batch_size": 4096, "tokenizer": {"max_length": 4096},
            "model": {"embedding_dim": 1024, "num_filters": 1024}}
    assert memory(huge) > 4 * ceiling
    for preset in ("default", "fast"):
        assert memory({"preset": preset}, SHORT) < ceiling / 4
        assert memory({"preset": preset}) < ceiling  # long texts are cut at max_length 256


@pytest.mark.parametrize(("more", "less"), [
    ({"batch_size": 256}, {}), ({"tokenizer": {"max_length": 1024}}, {}), ({"model": {"embedding_dim": 512}}, {}),
    ({"model": {"num_filters": 400}}, {}),
    ({"model": {"name": "bigru", "hidden_size": 512}}, {"model": {"name": "bigru"}}),
    ({"tokenizer": {"vocab_size": 200_000}}, {}), ({"optimizer": {"name": "adam"}}, {"optimizer": {"name": "sgd"}}),
    ({}, {"model": {"tfidf": None}}),
], ids=str)
def test_memory_grows_with_each_field_that_drives_it(more, less):
    assert memory(more) > memory(less)


def test_texts_count_at_their_length_in_tokens_up_to_max_length():
    spec = {"tokenizer": {"max_length": 4096, "kind": "word"}}
    assert memory(spec, SHORT) < memory(spec, LONG)
    # a subword or character tokenizer may split every character off (and `auto`, before the API resolves it,
    # may become one): their bound is the characters, not the words
    for kind in ("bpe", "char", "auto"):
        assert memory({"tokenizer": {"max_length": 4096, "kind": kind}}, SHORT) > memory(spec, SHORT)
    # Paris ? It ' s big . : the word tokenizer's pre-tokens
    assert DataShape.of(["Paris? It's big.", "a b"], records_bytes=40) == DataShape(
        rows=2, records_bytes=40, longest_words=7, longest_chars=14)
