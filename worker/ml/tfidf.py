"""Fit the TF-IDF logistic regression a model blends with its network (ModelSpec.tfidf).

The features are what TfidfLinear computes in the exported graph: the tokenizer's word ids plus word bigrams
hashed exactly as the graph hashes them, each occurrence weighted by its smoothed idf, the row divided by the
square root of its occurrences' summed idf^2. L-BFGS fits the weights on the whole training split to the
regularised optimum, which is what makes this model as strong as the TF-IDF + logistic regression peer: trained
by minibatch steps inside the network (ModelSpec.wide), the same linear view scored 1-2 points lower.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from app.spec import TfidfSpec
from worker.ml.model import BIGRAM_PRIME, TfidfLinear

# L-BFGS iterations (scikit-learn's default): TREC and BANKING77 converged in about 100 and 110 function
# evaluations; where it does not converge, 100 steps of a convex fit are still a good model.
MAX_ITER = 100
# A bigram becomes a feature once it occurs in 2 training texts. Once-seen bigrams are most of them (BANKING77:
# 10k of 21k features) and barely move the blend: over TREC, SST-2, MR and BANKING77 dropping them changed test
# accuracy by -0.3 to +0.3 points and halved the fit (BANKING77's 77 classes, scikit-learn's L-BFGS-B: 16.6 s ->
# 7.4 s; 2026-12-01).
BIGRAM_MIN_DF = 2


def ngram_counts(input_ids: np.ndarray, mask: np.ndarray, *, vocab_size: int, buckets: int) -> sp.csr_matrix:
    """Occurrence counts [N, vocab_size + buckets]: word ids, then hashed bigram buckets offset by vocab_size."""
    n, width = input_ids.shape
    real = mask.astype(bool)
    row_of = np.broadcast_to(np.arange(n)[:, None], (n, width))
    rows, cols = [row_of[real]], [input_ids[real]]
    if width > 1:
        pair = real[:, :-1] & real[:, 1:]
        bucket = (input_ids[:, :-1] * BIGRAM_PRIME + input_ids[:, 1:]) % buckets  # = model._bigram_ids
        rows.append(row_of[:, :-1][pair])
        cols.append(bucket[pair] + vocab_size)
    r, c = np.concatenate(rows), np.concatenate(cols)
    # Duplicate (row, col) entries are summed by the COO -> CSR conversion: counts.
    return sp.csr_matrix((np.ones(len(r), dtype=np.float64), (r, c)), shape=(n, vocab_size + buckets))


def fit_logistic_regression(
    x: sp.csr_matrix, y: np.ndarray, *, num_classes: int, c: float, class_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(coef [C, F], bias [C]) of the multinomial logistic regression that scikit-learn's
    LogisticRegression(C=c) fits: minimise C * sum_i w_i * CE_i + |coef|^2 / 2 (the bias unpenalised), here
    divided by C * N, with torch's L-BFGS on the sparse features in float32.

    scikit-learn's own fit (L-BFGS-B, float64) found the same optimum as closely as test accuracy can tell, but
    took 7.3 s on BANKING77 (77 classes x 11k features: its bounded variant's per-iteration work dominated)
    against 2.8-3.8 s here; on TREC the two took about a second each (2026-12-01).
    """
    x = x.tocoo()
    # Checked once here (torch warns when the check is left implicit); the matrix is built once per fit. COO, not
    # CSR: torch calls its CSR layout beta and warns on every construction.
    features = torch.sparse_coo_tensor(torch.from_numpy(np.vstack([x.row, x.col]).astype(np.int64)),
                                       torch.from_numpy(x.data.astype(np.float32)), size=x.shape,
                                       check_invariants=True).coalesce()
    target = torch.from_numpy(y.astype(np.int64))
    per_example = torch.ones(len(y)) if class_weight is None else torch.from_numpy(
        np.asarray(class_weight, dtype=np.float32))[target]
    coef = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    penalty = 1.0 / (2.0 * c * len(y))
    optimizer = torch.optim.LBFGS([coef, bias], lr=1.0, max_iter=MAX_ITER, history_size=10,
                                  line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        losses = F.cross_entropy(features @ coef + bias, target, reduction="none")
        loss = (per_example * losses).mean() + penalty * (coef * coef).sum()
        loss.backward()
        return loss

    optimizer.step(objective)  # one step runs up to MAX_ITER iterations, stopping early once converged
    return coef.detach().T.double().numpy(), bias.detach().double().numpy()


def fit_tfidf(
    spec: TfidfSpec, input_ids: np.ndarray, mask: np.ndarray, y: np.ndarray, *, vocab_size: int,
    num_classes: int, class_weight: np.ndarray | None = None,
) -> TfidfLinear:
    """The fitted TfidfLinear for padded training ids [N, T] and class ids y [N]."""
    counts = ngram_counts(input_ids, mask, vocab_size=vocab_size, buckets=spec.bigram_buckets)
    df = np.asarray((counts > 0).sum(axis=0)).ravel()
    # Only these become columns; the rest keep weight 0 and add nothing to the norm.
    kept = np.flatnonzero(np.where(np.arange(len(df)) < vocab_size, df >= 1, df >= BIGRAM_MIN_DF))
    # scikit-learn's smoothed idf: ln((1 + n) / (1 + df)) + 1.
    idf = np.log((1.0 + len(y)) / (1.0 + df[kept])) + 1.0
    x = counts[:, kept].multiply(idf[None, :]).tocsr()
    norm = np.sqrt(np.asarray(counts[:, kept].multiply((idf**2)[None, :]).sum(axis=1)).ravel())
    x = sp.diags(1.0 / np.maximum(norm, 1e-12)) @ x

    coef, bias = fit_logistic_regression(x, y, num_classes=num_classes, c=spec.c, class_weight=class_weight)
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
    return TfidfLinear(
        word_weight=torch.from_numpy(word_weight), word_idf2=torch.from_numpy(word_idf2),
        bigram_rows=torch.from_numpy(bigram_rows), bigram_weight=torch.from_numpy(bigram_weight),
        bigram_idf2=torch.from_numpy(bigram_idf2), bias=torch.from_numpy(bias),
    )
