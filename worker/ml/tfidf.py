"""Fit the TF-IDF logistic regression a model blends with its network (ModelSpec.tfidf).

The features are what TfidfLinear computes in the exported graph: the tokenizer's word ids plus word bigrams
hashed exactly as the graph hashes them, each occurrence weighted by its smoothed idf, the row divided by the
square root of its occurrences' summed idf^2. L-BFGS fits the weights on the whole training split to the
regularised optimum, which is what makes this model as strong as the TF-IDF + logistic regression peer: trained
by minibatch steps inside the network (ModelSpec.wide), the same linear view scored lower (bench/README.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from core.spec import TfidfSpec
from worker.ml.model import TfidfLinear, _bigram_ids

# L-BFGS iterations, scikit-learn's default, within which its own fit of these features converges. Where ours
# stops at the cap, the fit is still as good on test data as scikit-learn's converged one (bench/README.md).
MAX_ITER = 100
# A bigram becomes a feature once it occurs in 2 training texts. Once-seen bigrams are about half the features
# and barely move the blend's test accuracy, while dropping them halves the fit (bench/README.md).
BIGRAM_MIN_DF = 2
# At most this many weights (features x classes). L-BFGS keeps 10 pairs of gradient-sized vectors in float32 and
# the loss works on float64 copies, so 2M weights cost about 200 MB while fitting, and the exported model 8 MB.
# BANKING77 (77 classes) needs 0.85M; beyond the cap the most frequent features are kept (a 1,000-class set keeps
# 2,000).
MAX_WEIGHTS = 2_000_000


def ngram_counts(input_ids: np.ndarray, mask: np.ndarray, *, vocab_size: int, buckets: int) -> sp.csr_matrix:
    """Occurrence counts [N, vocab_size + buckets]: word ids, then hashed bigram buckets offset by vocab_size."""
    n, width = input_ids.shape
    real = mask.astype(bool)
    row_of = np.broadcast_to(np.arange(n)[:, None], (n, width))
    rows, cols = [row_of[real]], [input_ids[real]]
    if width > 1:
        pair = real[:, :-1] & real[:, 1:]
        # The graph's own hash, so training features and served scores can never disagree on a bucket.
        bucket = _bigram_ids(torch.from_numpy(np.asarray(input_ids, dtype=np.int64)), buckets).numpy()
        rows.append(row_of[:, :-1][pair])
        cols.append(bucket[pair] + vocab_size)
    r, c = np.concatenate(rows), np.concatenate(cols)
    # Duplicate (row, col) entries are summed by the COO -> CSR conversion: counts.
    return sp.csr_matrix((np.ones(len(r), dtype=np.float64), (r, c)), shape=(n, vocab_size + buckets))


def _csr(x: sp.csr_matrix) -> torch.Tensor:
    """A float64 torch CSR copy of x (torch's CSR products use both cores; scipy's, one)."""
    x = sp.csr_matrix(x, dtype=np.float64)
    x.sort_indices()
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta state": the layout's one product we use is stable.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(x.indptr.astype(np.int64)),
                                       torch.from_numpy(x.indices.astype(np.int64)), torch.from_numpy(x.data),
                                       size=x.shape, check_invariants=True)


def fit_logistic_regression(
    x: sp.csr_matrix, y: np.ndarray, *, num_classes: int, c: float, class_weight: np.ndarray | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(coef [C, F], bias [C]) of the multinomial logistic regression that scikit-learn's
    LogisticRegression(C=c) fits: minimise C * sum_i w_i * CE_i + |coef|^2 / 2 (the bias unpenalised), here
    divided by C * N, by torch's L-BFGS on a loss and gradient computed by hand around two sparse products.

    scikit-learn's own fit (L-BFGS-B) found the same optimum as closely as test accuracy can tell, but its bounded
    variant's per-iteration work grows with classes x features; torch's autograd through a sparse COO product,
    and scipy's single-core products, were slower as well. The loss and gradient are computed in float64: with
    float32 products the line search stalled. The weights, and L-BFGS's history of them, are float32: its vector
    updates read that history many times per iteration and were most of the fit's time, and float32 there cost
    no accuracy. The timings and scores behind each choice: bench/README.md.

    `x` is sparse (TF-IDF rows) or a dense array (an encoder's pooled features, for its head_init probe).
    `init` (coef [C, F], bias [C]) starts L-BFGS there instead of at zero: the loss is convex, so the optimum is
    the same, reached in fewer iterations from a nearby fit.
    """
    if sp.issparse(x):
        rows_x, columns_x = _csr(x), _csr(sp.csr_matrix(x).T)  # X @ W, and X^T @ G for the gradient
    else:  # dense features (an encoder's pooled vectors): plain float64 products
        rows_x = torch.from_numpy(np.asarray(x, dtype=np.float64))
        columns_x = rows_x.T
    n, features = x.shape
    target = torch.from_numpy(np.asarray(y, dtype=np.int64))
    onehot = F.one_hot(target, num_classes).double()
    per_example = torch.ones(n, dtype=torch.float64) if class_weight is None else torch.from_numpy(
        np.asarray(class_weight, dtype=np.float64))[target]
    per_example = (per_example / n).unsqueeze(1)  # the mean's 1/N folded in
    penalty = 1.0 / (2.0 * c * n)
    coef = torch.zeros(features, num_classes, dtype=torch.float32)
    bias = torch.zeros(num_classes, dtype=torch.float32)
    if init is not None:
        coef.copy_(torch.from_numpy(np.asarray(init[0], dtype=np.float32).T))
        bias.copy_(torch.from_numpy(np.asarray(init[1], dtype=np.float32)))
    coef.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([coef, bias], lr=1.0, max_iter=MAX_ITER, history_size=10,
                                  line_search_fn="strong_wolfe")

    @torch.no_grad()
    def objective() -> torch.Tensor:
        w, b = coef.double(), bias.double()
        z = rows_x @ w + b
        log_p = torch.log_softmax(z, dim=1)
        loss = -(per_example * onehot * log_p).sum() + penalty * (w * w).sum()
        g = per_example * (log_p.exp() - onehot)  # d loss / d z, [N, C]
        coef.grad = (columns_x @ g + 2.0 * penalty * w).float()
        bias.grad = g.sum(dim=0).float()
        return loss  # float64: the line search compares losses that differ in their 8th digit near the optimum

    optimizer.step(objective)  # one step runs up to MAX_ITER iterations, stopping early once converged
    return coef.detach().double().T.numpy().copy(), bias.detach().double().numpy().copy()


@dataclass
class TfidfFit:
    """A fitted TF-IDF member: the TfidfLinear to serve, and the fit it came from (to warm-start another)."""

    linear: TfidfLinear
    columns: np.ndarray  # the feature ids kept: word ids, then vocab_size + bigram bucket
    coef: np.ndarray  # [C, len(columns)], on the idf-weighted, normalised features
    bias: np.ndarray  # [C]


def fit_tfidf(
    spec: TfidfSpec, input_ids: np.ndarray, mask: np.ndarray, y: np.ndarray, *, vocab_size: int,
    num_classes: int, class_weight: np.ndarray | None = None, warm: TfidfFit | None = None,
) -> TfidfFit:
    """The fitted member for padded training ids [N, T] and class ids y [N]; `warm`, an earlier fit on some of
    these rows, is where L-BFGS starts (its weights for the features both fits keep)."""
    counts = ngram_counts(input_ids, mask, vocab_size=vocab_size, buckets=spec.bigram_buckets)
    df = np.asarray((counts > 0).sum(axis=0)).ravel()
    # Only these become columns; the rest keep weight 0 and add nothing to the norm.
    kept = np.flatnonzero(np.where(np.arange(len(df)) < vocab_size, df >= 1, df >= BIGRAM_MIN_DF))
    budget = max(1, MAX_WEIGHTS // num_classes)
    if len(kept) > budget:
        kept = np.sort(kept[np.argsort(-df[kept], kind="stable")[:budget]])
    # scikit-learn's smoothed idf: ln((1 + n) / (1 + df)) + 1.
    idf = np.log((1.0 + len(y)) / (1.0 + df[kept])) + 1.0
    x = counts[:, kept].multiply(idf[None, :]).tocsr()
    norm = np.sqrt(np.asarray(counts[:, kept].multiply((idf**2)[None, :]).sum(axis=1)).ravel())
    x = sp.diags(1.0 / np.maximum(norm, 1e-12)) @ x

    init = None
    if warm is not None:
        start = np.zeros((num_classes, len(kept)))
        _, here, there = np.intersect1d(kept, warm.columns, assume_unique=True, return_indices=True)
        start[:, here] = warm.coef[:, there]
        init = (start, warm.bias)
    coef, bias = fit_logistic_regression(x, y, num_classes=num_classes, c=spec.c, class_weight=class_weight,
                                         init=init)
    weighted = coef * idf[None, :]  # [C, kept]

    is_word = kept < vocab_size
    word_weight = np.zeros((vocab_size, num_classes))
    word_idf2 = np.zeros(vocab_size)
    word_weight[kept[is_word]] = weighted[:, is_word].T
    word_idf2[kept[is_word]] = idf[is_word] ** 2
    kept_buckets = kept[~is_word] - vocab_size
    bigram_rows = np.zeros(spec.bigram_buckets, dtype=np.int32)
    bigram_rows[kept_buckets] = np.arange(1, len(kept_buckets) + 1)  # row 0: every other bucket
    bigram_weight = np.zeros((len(kept_buckets) + 1, num_classes))
    bigram_idf2 = np.zeros(len(kept_buckets) + 1)
    bigram_weight[1:] = weighted[:, ~is_word].T
    bigram_idf2[1:] = idf[~is_word] ** 2
    linear = TfidfLinear(
        word_weight=torch.from_numpy(word_weight), word_idf2=torch.from_numpy(word_idf2),
        bigram_rows=torch.from_numpy(bigram_rows), bigram_weight=torch.from_numpy(bigram_weight),
        bigram_idf2=torch.from_numpy(bigram_idf2), bias=torch.from_numpy(bias),
    )
    return TfidfFit(linear=linear, columns=kept, coef=coef, bias=bias)
