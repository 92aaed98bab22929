"""How many parameters a spec's model will have, computed from the spec alone (no torch).

The API checks a job against MAX_MODEL_PARAMS before queueing it. The formulas mirror worker/ml/model.py;
tests/unit/test_model_size.py compares them with the built torch modules for every architecture.
"""

from __future__ import annotations

from app.spec import ModelSpec, TrainingSpec


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _gru(n_in: int, hidden: int) -> int:
    # three gates, each with input and hidden weights and two biases (torch.nn.GRU keeps b_ih and b_hh)
    return 3 * hidden * (n_in + hidden + 2)


def estimate_params(model: ModelSpec, *, vocab_size: int, num_classes: int) -> int:
    """Trainable parameters of `model` with an embedding table of `vocab_size` rows and `num_classes` outputs."""
    embedding = vocab_size * model.embedding_dim
    if model.name == "textcnn":
        features = model.num_filters * len(model.filter_sizes)
        convs = sum(model.embedding_dim * model.num_filters * w + model.num_filters for w in model.filter_sizes)
        body = embedding + convs
    elif model.name == "fasttext":
        features = model.embedding_dim
        body = embedding + model.ngram_buckets * model.embedding_dim
    elif model.name == "bigru":
        hidden = model.hidden_size
        features = 2 * hidden
        sizes = [model.embedding_dim] + [2 * hidden] * (model.num_layers - 1)
        body = embedding + 2 * sum(_gru(n, hidden) for n in sizes)  # a forward and a backward GRU per layer
        if model.pooling == "attention":
            body += _linear(features, hidden) + _linear(hidden, 1, bias=False)
    else:
        raise ValueError(f"unknown model {model.name!r}")
    norm = 2 * features if model.batch_norm else 0  # BatchNorm1d: weight and bias (running stats are buffers)
    # The wide branch: per-class weights for every word and every bigram bucket (fasttext has no such branch).
    wide = (vocab_size + model.ngram_buckets) * num_classes if model.wide and model.name != "fasttext" else 0
    return body + norm + wide + _linear(features, num_classes)


def spec_params(spec: TrainingSpec, *, num_classes: int) -> int:
    """Upper bound for a job: the vocabulary can grow to tokenizer.vocab_size (special tokens included)."""
    return estimate_params(spec.model, vocab_size=spec.tokenizer.vocab_size, num_classes=num_classes)
