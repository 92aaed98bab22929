"""The TF-IDF member (worker/ml/tfidf.py) and the blend (worker/ml/model.py): the same model scikit-learn fits,
computed in the graph, averaged with the network as the spec says."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

import worker.ml.tfidf as tfidf_mod
from core.ml.tokenizer import TextEncoder, fit_tokenizer
from core.spec import TfidfSpec, TokenizerSpec, TrainingSpec
from worker.ml.model import BIGRAM_PRIME, Blend, TfidfLinear
from worker.ml.tfidf import BIGRAM_MIN_DF, fit_logistic_regression, fit_tfidf, ngram_counts
from worker.ml.train import BLEND_WEIGHTS, choose_blend_weight, train

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")
WORDS = [f"w{i}" for i in range(40)]


def _texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Texts of distinct words (so no feature repeats within a text); class c favours words c, c+3, c+6, ..."""
    rng = np.random.default_rng(seed)
    texts, y = [], rng.integers(0, 3, size=n)
    for c in y:
        favoured = [w for i, w in enumerate(WORDS) if i % 3 == c]
        words = list(rng.choice(favoured, size=3, replace=False)) + list(rng.choice(WORDS, size=4, replace=False))
        texts.append(" ".join(dict.fromkeys(words)))  # distinct, order kept
    return texts, y


def test_ngram_counts_hashes_bigrams_as_the_graph_does():
    ids = np.array([[5, 7, 5, 7, 0], [3, 0, 0, 0, 0]])
    mask = (ids != 0).astype(np.int64)
    counts = ngram_counts(ids, mask, vocab_size=10, buckets=1_000).toarray()
    bucket = (5 * BIGRAM_PRIME + 7) % 1_000
    back = (7 * BIGRAM_PRIME + 5) % 1_000
    assert counts[0, 5] == 2 and counts[0, 7] == 2 and counts[0, 10 + bucket] == 2 and counts[0, 10 + back] == 1
    assert counts[0].sum() == 4 + 3 and counts[1].sum() == 1 and counts[1, 3] == 1  # padding adds nothing


def test_the_member_is_the_model_scikit_learn_fits_on_tfidf_features():
    texts, y = _texts(300, seed=0)
    test_texts, _ = _texts(50, seed=1)
    encoder = TextEncoder(fit_tokenizer(texts, TokenizerSpec(vocab_size=100)), max_length=32)
    ids, mask = encoder.encode(texts)
    spec = TfidfSpec(c=10.0, bigram_buckets=4_096)
    member = fit_tfidf(spec, ids, mask, y, vocab_size=encoder.vocab_size, num_classes=3).linear

    # The same features built by scikit-learn: words and hashed bigrams as tokens, smoothed idf, L2 rows.
    def analyse(text: str) -> list[str]:
        row = encoder.tokenizer.encode(text, add_special_tokens=False).ids
        bigrams = [f"b{(a * BIGRAM_PRIME + b) % spec.bigram_buckets}" for a, b in zip(row, row[1:])]
        return [f"w{i}" for i in row] + bigrams

    # min_df applies to words too in scikit-learn: every word occurs in many texts, so only bigrams are cut.
    words_df = np.asarray((ngram_counts(ids, mask, vocab_size=encoder.vocab_size, buckets=1_024)[
        :, 2:encoder.vocab_size] > 0).sum(axis=0)).ravel()
    assert words_df.min() >= BIGRAM_MIN_DF
    vectorizer = TfidfVectorizer(analyzer=analyse, min_df=BIGRAM_MIN_DF)
    reference = LogisticRegression(C=spec.c, max_iter=2_000, tol=1e-10).fit(vectorizer.fit_transform(texts), y)
    expected = reference.predict_proba(vectorizer.transform(test_texts))

    test_ids, test_mask = encoder.encode(test_texts)
    with torch.no_grad():
        scores = member(torch.from_numpy(test_ids), torch.from_numpy(test_mask).float())
    got = torch.softmax(scores, dim=1).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense"])
def test_logistic_regression_weighs_classes_like_scikit_learn(dense: bool):
    """Sparse TF-IDF rows, and dense ones (an encoder's pooled features for its head_init probe)."""
    rng = np.random.default_rng(0)
    x = sp.random(200, 30, density=0.2, random_state=0, format="csr")
    if dense:
        x = x.toarray() + rng.normal(size=x.shape)
    y = rng.integers(0, 3, size=200)
    weights = np.array([1.0, 4.0, 0.5])
    coef, bias = fit_logistic_regression(x, y, num_classes=3, c=1.0, class_weight=weights)
    reference = LogisticRegression(C=1.0, max_iter=2_000, tol=1e-10, class_weight=dict(enumerate(weights))).fit(x, y)
    z = x @ coef.T + bias
    got = np.exp(z - z.max(axis=1, keepdims=True))
    got /= got.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, reference.predict_proba(x), atol=2e-3)


def test_blend_averages_the_two_models_probabilities():
    torch.manual_seed(0)
    network = torch.nn.Module()
    network.head = torch.nn.Linear(4, 3)
    network.forward = lambda ids, mask: network.head(torch.nn.functional.one_hot(ids[:, 0] % 4, 4).float())
    member = TfidfLinear(word_weight=torch.randn(10, 3), word_idf2=torch.rand(10) + 1, bigram_rows=torch.zeros(64),
                         bigram_weight=torch.zeros(1, 3), bigram_idf2=torch.zeros(1), bias=torch.randn(3))
    blend = Blend(network, member, weight=0.3)
    ids = torch.tensor([[2, 5, 7], [3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = 0.7 * torch.softmax(network(ids, mask), 1) + 0.3 * torch.softmax(member(ids, mask.float()), 1)
        got = torch.softmax(blend(ids, mask), 1)
    torch.testing.assert_close(got, expected)
    assert blend.head is network.head


def test_an_empty_text_scores_the_bias_alone():
    member = TfidfLinear(word_weight=torch.ones(10, 2), word_idf2=torch.ones(10), bigram_rows=torch.zeros(64),
                         bigram_weight=torch.zeros(1, 2), bigram_idf2=torch.zeros(1), bias=torch.tensor([0.5, -0.5]))
    scores = member(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 5))
    torch.testing.assert_close(scores, torch.tensor([[0.5, -0.5]]))


def _spec(**model) -> TrainingSpec:
    return TrainingSpec.model_validate({
        "dataset_id": str(uuid.uuid4()), "epochs": 2, "batch_size": 16, "device": "cpu", "early_stopping": None,
        "tokenizer": {"vocab_size": 100, "max_length": 32},
        "model": {"embedding_dim": 16, "filter_sizes": [2, 3], "num_filters": 8, **model}})


def test_training_reports_each_member_and_scores_the_blend():
    texts, y = _texts(200, seed=2)
    labels = [str(c) for c in y]
    blended = train(_spec(tfidf={"weight": None, "refit": True}), texts, labels, label_names=["0", "1", "2"],
                    device=CPU)
    assert isinstance(blended.model, Blend)
    m = blended.metrics
    assert {"network_val_accuracy", "tfidf_val_accuracy", "tfidf_fit_seconds", "tfidf_weight"} <= m.keys()
    assert m["tfidf_weight"] in BLEND_WEIGHTS and m["tfidf_refit"] is True
    assert blended.model.weight == m["tfidf_weight"]
    # The reported validation scores are the blend's before the refit, and its probabilities come back for the
    # evaluation: the served member has seen the validation rows.
    assert blended.val_proba is not None and blended.val_proba.shape == (len(blended.val_y), 3)
    assert m["accuracy"] == pytest.approx(float(np.mean(blended.val_proba.argmax(1) == np.array(blended.val_y))))
    # The network alone, trained identically, is the blend's network member.
    alone = train(_spec(tfidf=None), texts, labels, label_names=["0", "1", "2"], device=CPU)
    assert not isinstance(alone.model, Blend) and "tfidf_val_accuracy" not in alone.metrics
    assert alone.metrics["accuracy"] == m["network_val_accuracy"]
    for name, value in alone.model.state_dict().items():
        assert torch.equal(value, blended.model.network.state_dict()[name]), name


def test_spec_defaults_and_bounds():
    spec = _spec()
    assert spec.model.tfidf == TfidfSpec(weight=0.5, refit=False, c=10.0, bigram_buckets=262_144)
    fast = TrainingSpec.model_validate({"dataset_id": str(uuid.uuid4()), "preset": "fast"})
    assert fast.model.tfidf.weight == 0.85
    assert TrainingSpec.model_validate({"dataset_id": str(uuid.uuid4()), "preset": "fast",
                                        "model": {"tfidf": None}}).model.tfidf is None
    for bad in ({"weight": 1.0}, {"weight": 0.0}, {"c": 0}, {"bigram_buckets": 10}, {"alpha": 1}):
        with pytest.raises(ValueError):
            TfidfSpec(**bad)


def test_a_weight_budget_keeps_the_most_frequent_features(monkeypatch):
    texts, y = _texts(300, seed=3)
    encoder = TextEncoder(fit_tokenizer(texts, TokenizerSpec(vocab_size=100)), max_length=32)
    ids, mask = encoder.encode(texts)
    full = fit_tfidf(TfidfSpec(bigram_buckets=4_096), ids, mask, y, vocab_size=encoder.vocab_size,
                     num_classes=3).linear
    monkeypatch.setattr(tfidf_mod, "MAX_WEIGHTS", 3 * 20)  # 20 features of 3 classes
    small = fit_tfidf(TfidfSpec(bigram_buckets=4_096), ids, mask, y, vocab_size=encoder.vocab_size,
                      num_classes=3).linear
    kept = int((small.word_idf2 > 0).sum() + (small.bigram_idf2 > 0).sum())
    assert kept == 20 and len(small.bigram_weight) < len(full.bigram_weight)
    # The most frequent features have the lowest idf: every kept word is at least as common as every dropped one.
    kept_words = small.word_idf2.squeeze(1) > 0
    dropped = (full.word_idf2.squeeze(1) > 0) & ~kept_words
    if dropped.any():
        assert full.word_idf2.squeeze(1)[kept_words].max() <= full.word_idf2.squeeze(1)[dropped].min()
    with torch.no_grad():  # still a working classifier on its training texts
        scores = small(torch.from_numpy(ids), torch.from_numpy(mask).float())
    assert (scores.argmax(dim=1).numpy() == y).mean() > 0.6


def test_the_weight_is_chosen_on_validation_and_ties_go_to_an_even_blend():
    y = np.array([0, 1, 0, 1])
    confident = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    wrong = confident[:, ::-1].copy()
    # The network right and the TF-IDF member wrong: the smallest weight scores best by accuracy and by loss.
    assert choose_blend_weight(confident, wrong, y, "accuracy") == 0.45  # every weight under 0.5 ties at 100 %
    assert choose_blend_weight(confident, wrong, y, "loss") == BLEND_WEIGHTS[0]
    assert choose_blend_weight(wrong, confident, y, "macro_f1") == 0.55
    # Both members equally good: every weight ties, so 0.5.
    assert choose_blend_weight(confident, confident, y, "accuracy") == 0.5


def test_a_fixed_weight_is_kept_and_only_refit_serves_a_second_fit():
    texts, y = _texts(200, seed=4)
    labels = [str(c) for c in y]
    fixed = train(_spec(tfidf={"weight": 0.3}), texts, labels, label_names=["0", "1", "2"], device=CPU)
    assert fixed.model.weight == 0.3 and fixed.metrics["tfidf_weight"] == 0.3 and fixed.metrics["tfidf_refit"] is False
    assert fixed.val_proba is None
    refit = train(_spec(tfidf={"weight": 0.3, "refit": True}), texts, labels, label_names=["0", "1", "2"], device=CPU)
    # Same network and weight; the refit member was fit on more rows, so its weights differ.
    assert not torch.equal(refit.model.linear.bias, fixed.model.linear.bias)
    assert refit.metrics["accuracy"] == fixed.metrics["accuracy"]  # both the blend before any refit


def test_a_warm_started_fit_reaches_the_same_optimum():
    texts, y = _texts(300, seed=5)
    encoder = TextEncoder(fit_tokenizer(texts, TokenizerSpec(vocab_size=100)), max_length=32)
    ids, mask = encoder.encode(texts)
    spec = TfidfSpec(c=1.0, bigram_buckets=4_096)
    first = fit_tfidf(spec, ids[:250], mask[:250], y[:250], vocab_size=encoder.vocab_size, num_classes=3)
    cold = fit_tfidf(spec, ids, mask, y, vocab_size=encoder.vocab_size, num_classes=3)
    warm = fit_tfidf(spec, ids, mask, y, vocab_size=encoder.vocab_size, num_classes=3, warm=first)
    np.testing.assert_array_equal(cold.columns, warm.columns)
    np.testing.assert_allclose(warm.coef, cold.coef, atol=2e-3)
    np.testing.assert_allclose(warm.bias, cold.bias, atol=2e-3)


def test_a_caller_leaving_the_kind_auto_gets_the_character_defaults_on_chinese_text():
    """The benchmarks call train() with tokenizer.kind auto, which the API would have resolved: the same kind
    and defaults apply (core/spec.py with_tokenizer_kind)."""
    rng = np.random.default_rng(0)
    sport, food = "足球比赛冠军球队进球", "美食餐厅味道好吃米饭"
    texts = ["".join(rng.choice(list(sport if i % 2 else food), 8)) for i in range(80)]
    labels = ["体育" if i % 2 else "美食" for i in range(80)]
    spec = TrainingSpec.model_validate({"dataset_id": str(uuid.uuid4()), "epochs": 1, "device": "cpu",
                                        "model": {"embedding_dim": 16, "num_filters": 8}})
    result = train(spec, texts, labels, label_names=["体育", "美食"], device=CPU)
    assert result.model.weight == 0.7 and result.metrics["tfidf_weight"] == 0.7
    assert [conv.kernel_size[0] for conv in result.model.network.convs] == [1, 2, 3]
