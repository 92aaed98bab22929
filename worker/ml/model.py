"""Text classifiers that take padded (input_ids, attention_mask) and return logits [B, C].

All export to ONNX with dynamic batch and token axes: no EmbeddingBag, no data-dependent Python control flow.
Every model's output for a text is independent of how much padding its batch adds (so batching at serving time
cannot change a prediction), and every model ends in `self.head`, the output nn.Linear.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.ml.tokenizer import PAD_ID
from core.spec import ModelSpec

# Multiplier for hashing a word bigram (a, b) to a bucket: a prime larger than any vocabulary (le=500_000),
# so distinct pairs collide only through the final modulo. int64 holds 500_000 * 1_000_003 + 500_000 easily.
BIGRAM_PRIME = 1_000_003
# TextCNN embedding init range. nn.Embedding's N(0, 1) default dwarfs what Adam's ~1e-3 steps move in a few
# epochs, so random directions dominate the features; a small uniform range scored clearly better on TREC, and
# a little better than Kim's CNN-rand range of 0.25 (bench/README.md).
TEXTCNN_INIT = 0.1
# BiGRU embedding init: the same small uniform range as TextCNN, for the same reason.
BIGRU_INIT = TEXTCNN_INIT
# Masked positions' attention score: exp(-1e9 - max) underflows to exactly 0 in fp32 and bf16 alike, so padding
# gets zero weight and cannot move the pooled vector; a finite value (not -inf) keeps an all-padding row NaN-free.
MASKED_SCORE = -1e9


def _init_embedding(embedding: nn.Embedding, bound: float) -> None:
    """Uniform(-bound, bound) init with the padding row (if any) kept at zero."""
    nn.init.uniform_(embedding.weight, -bound, bound)
    if embedding.padding_idx is not None:
        with torch.no_grad():
            embedding.weight[embedding.padding_idx].zero_()


def _bigram_ids(input_ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """Hashed word-bigram ids [B, T-1], computed in the graph so the exported model hashes them itself."""
    return (input_ids[:, :-1] * BIGRAM_PRIME + input_ids[:, 1:]) % buckets


class WideNgrams(nn.Module):
    """Per-class weights for every word and hashed word bigram, summed over the text and divided by the square
    root of the n-gram count: a linear model on L2-normalised binary n-gram features (TF-IDF + logistic
    regression's view of a text), whose logits are added to a network's. Zero-initialised, so training starts
    from the network alone."""

    def __init__(self, vocab_size: int, buckets: int, num_classes: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.words = nn.Embedding(vocab_size, num_classes, padding_idx=PAD_ID)
        self.bigrams = nn.Embedding(buckets, num_classes)
        nn.init.zeros_(self.words.weight)
        nn.init.zeros_(self.bigrams.weight)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bigram_mask = mask[:, :-1] * mask[:, 1:]
        total = (self.words(input_ids) * mask.unsqueeze(-1)).sum(dim=1)
        total = total + (self.bigrams(_bigram_ids(input_ids, self.buckets)) * bigram_mask.unsqueeze(-1)).sum(dim=1)
        count = (mask.sum(dim=1) + bigram_mask.sum(dim=1)).clamp(min=1.0)
        return total / count.sqrt().unsqueeze(-1)


class TextCNN(nn.Module):
    """Kim (2014): one convolution per width over word embeddings, ReLU, max over time, dropout, linear.

    Each width keeps its own Conv1d parameters (what Kim trained, and what a checkpoint holds), but forward runs
    them as one matrix product over the text's windows of max-width tokens, each narrower kernel zero-padded to
    that width (im2col): a faster training step on our CPU than one Conv1d call per width, whose per-call
    overhead dominates such short texts (bench/README.md). The exported graph does the same with one Conv
    (MergedTextCNN).
    """

    def __init__(self, spec: ModelSpec, vocab_size: int, num_classes: int) -> None:
        super().__init__()
        self.filter_sizes = tuple(spec.filter_sizes)
        self.max_width = max(self.filter_sizes)
        self.embedding = nn.Embedding(vocab_size, spec.embedding_dim, padding_idx=PAD_ID)
        _init_embedding(self.embedding, TEXTCNN_INIT)
        self.convs = nn.ModuleList(nn.Conv1d(spec.embedding_dim, spec.num_filters, w) for w in self.filter_sizes)
        features = spec.num_filters * len(self.filter_sizes)
        self.norm = nn.BatchNorm1d(features) if spec.batch_norm else nn.Identity()
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(features, num_classes)
        self.wide = WideNgrams(vocab_size, spec.ngram_buckets, num_classes) if spec.wide else None
        # Each feature map's kernel width, in the order of the merged product's output columns.
        widths = torch.tensor(self.filter_sizes).repeat_interleave(spec.num_filters)
        self.register_buffer("widths", widths.view(1, 1, -1), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] for right-padded input_ids and attention_mask [B, T]."""
        mask = attention_mask.to(torch.float32)
        logits = self._deep(input_ids, attention_mask, mask)
        return logits if self.wide is None else logits + self.wide(input_ids, mask)

    def merged_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [channels, D, max_width], bias [channels]): every width's kernel, its missing taps zero."""
        weight = torch.cat([F.pad(conv.weight, (0, self.max_width - w))
                            for w, conv in zip(self.filter_sizes, self.convs)])
        return weight, torch.cat([conv.bias for conv in self.convs])

    def _deep(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embedding(input_ids) * mask.unsqueeze(-1)  # [B, T, D]; padded positions zeroed whatever their id
        batch, length, dim = x.shape
        # Append max_width - 1 zero rows so every width has >= 1 window even for T=1 inputs: the model then needs
        # no minimum sequence length, in torch or in ONNX.
        windows = F.pad(x, (0, 0, 0, self.max_width - 1)).unfold(1, self.max_width, 1)  # [B, T, D, max_width]
        weight, bias = self.merged_kernel()
        h = torch.addmm(bias, windows.reshape(batch * length, dim * self.max_width),
                        weight.reshape(len(bias), dim * self.max_width).t())
        h = F.relu(h).view(batch, length, -1)  # [B, T, channels]; position t covers tokens t..t+w-1
        # Windows starting past len - w cover padding only; the first window always counts, so a text shorter
        # than w (or empty) still gets a feature. ReLU makes every value >= 0, so zeroing the invalid positions
        # cannot beat the max over the valid ones: no -inf needed.
        lengths = attention_mask.sum(dim=1).view(batch, 1, 1)
        positions = torch.arange(length, device=h.device).view(1, length, 1)
        valid = positions < (lengths - self.widths + 1).clamp(min=1)  # [B, T, channels]
        z = (h * valid.to(h.dtype)).max(dim=1).values  # max, not amax: one index to scatter back to, faster
        return self.head(self.dropout(self.norm(z)))

    def for_export(self) -> nn.Module:
        """The same function in fewer graph nodes, for serving (see MergedTextCNN)."""
        return MergedTextCNN(self).to(self.head.weight.device).eval()


class MergedTextCNN(nn.Module):
    """A trained TextCNN with its convolutions merged into one, for export: each width-w kernel becomes a
    max-width kernel whose last taps are zero, so one Conv computes every feature map at once, and one mask
    (per channel: its own width's valid positions) replaces the per-width masking.

    The outputs equal TextCNN's up to float summation order; check_parity compares the export against the
    TextCNN itself. Training keeps separate convolutions, whose zero taps would otherwise learn. The merged graph
    has far fewer nodes, and per-node overhead dominates a short text's serving cost (bench/README.md).
    """

    def __init__(self, cnn: TextCNN) -> None:
        super().__init__()
        self.embedding, self.norm, self.dropout, self.head, self.wide = (
            cnn.embedding, cnn.norm, cnn.dropout, cnn.head, cnn.wide)
        self.max_width = cnn.max_width
        maps = cnn.convs[0].out_channels
        self.conv = nn.Conv1d(cnn.embedding.embedding_dim, maps * len(cnn.convs), cnn.max_width)
        with torch.no_grad():
            weight, bias = cnn.merged_kernel()
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)
        self.register_buffer("widths", cnn.widths.reshape(1, -1, 1).clone())  # [1, channels, 1]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        x = (self.embedding(input_ids) * mask.unsqueeze(-1)).transpose(1, 2)
        h = F.relu(self.conv(F.pad(x, (0, self.max_width - 1))))  # [B, channels, T]
        lengths = attention_mask.sum(dim=1, keepdim=True).unsqueeze(-1)  # [B, 1, 1]
        positions = torch.arange(h.size(2), device=h.device)  # [T]
        # TextCNN's rule per channel: windows starting past len - w are padding, but the first always counts.
        valid = positions < (lengths - self.widths + 1).clamp(min=1)  # [B, channels, T]
        z = (h * valid.to(h.dtype)).amax(dim=2)
        logits = self.head(self.dropout(self.norm(z)))
        return logits if self.wide is None else logits + self.wide(input_ids, mask)


class FastText(nn.Module):
    """Joulin et al. (2016): mean of word and hashed word-bigram embeddings, dropout, linear."""

    def __init__(self, spec: ModelSpec, vocab_size: int, num_classes: int) -> None:
        super().__init__()
        self.buckets = spec.ngram_buckets
        self.embedding = nn.Embedding(vocab_size, spec.embedding_dim, padding_idx=PAD_ID)
        self.bigrams = nn.Embedding(spec.ngram_buckets, spec.embedding_dim)
        # fastText's own init, U(-1/dim, 1/dim): N(0, 1) scored far lower on TREC (bench/README.md).
        for table in (self.embedding, self.bigrams):
            _init_embedding(table, 1.0 / spec.embedding_dim)
        self.norm = nn.BatchNorm1d(spec.embedding_dim) if spec.batch_norm else nn.Identity()
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.embedding_dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] for right-padded input_ids and attention_mask [B, T]."""
        mask = attention_mask.to(torch.float32)
        # Hash inside forward (not in the tokenizer) so the exported graph computes bigrams itself.
        bigram_ids = _bigram_ids(input_ids, self.buckets)  # [B, T-1]
        bigram_mask = mask[:, :-1] * mask[:, 1:]  # a bigram is real only if both of its words are
        total = (self.embedding(input_ids) * mask.unsqueeze(-1)).sum(dim=1)
        total = total + (self.bigrams(bigram_ids) * bigram_mask.unsqueeze(-1)).sum(dim=1)
        count = (mask.sum(dim=1) + bigram_mask.sum(dim=1)).clamp(min=1.0)  # empty text -> zero vector, not 0/0
        z = total / count.unsqueeze(-1)
        return self.head(self.dropout(self.norm(z)))


def _recur(gru: nn.GRU, x: torch.Tensor) -> torch.Tensor:
    """All time steps' outputs of `gru` over x [B, T, D], computed in fp32 even inside autocast."""
    if torch.is_autocast_enabled(x.device.type):
        # A recurrence compounds its rounding error at every time step, and bf16 keeps 8 bits of mantissa:
        # the GRU runs in fp32 (the matmuls around it stay in bf16). Export runs without autocast, so this
        # branch never reaches the ONNX graph.
        with torch.autocast(x.device.type, enabled=False):
            return gru(x.float())[0]
    return gru(x)[0]


class BiGRU(nn.Module):
    """Embedding, stacked bidirectional GRU, masked attention (or max / mean) pooling, dropout, linear.

    Each layer runs two forward GRUs: one over the text, one over the text reversed. Reversing a right-padded
    row whole would feed the backward GRU padding before the words (what nn.GRU(bidirectional=True) does without
    pack_padded_sequence, which does not export), so the row's first `length` positions are reversed in place
    and the padding stays at the end. Each direction then reads only real tokens before any padding, and a text's
    logits do not depend on how long its batch is. In ONNX each direction is one GRU node.
    """

    def __init__(self, spec: ModelSpec, vocab_size: int, num_classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, spec.embedding_dim, padding_idx=PAD_ID)
        _init_embedding(self.embedding, BIGRU_INIT)
        hidden = spec.hidden_size
        sizes = [spec.embedding_dim] + [2 * hidden] * (spec.num_layers - 1)
        self.forward_grus = nn.ModuleList(nn.GRU(n, hidden, batch_first=True) for n in sizes)
        self.backward_grus = nn.ModuleList(nn.GRU(n, hidden, batch_first=True) for n in sizes)
        self.pooling = spec.pooling
        features = 2 * hidden
        if spec.pooling == "attention":
            # Additive attention (Bahdanau; Yang et al. 2016): score_t = v . tanh(W h_t + b).
            self.attention = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1, bias=False))
        self.norm = nn.BatchNorm1d(features) if spec.batch_norm else nn.Identity()
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(features, num_classes)
        self.wide = WideNgrams(vocab_size, spec.ngram_buckets, num_classes) if spec.wide else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, C] for right-padded input_ids and attention_mask [B, T]."""
        logits = self._deep(input_ids, attention_mask)
        if self.wide is None:
            return logits
        return logits + self.wide(input_ids, attention_mask.to(torch.float32))

    def _deep(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        valid = attention_mask.unsqueeze(-1).to(torch.float32)  # [B, T, 1]
        lengths = attention_mask.sum(dim=1, keepdim=True)  # [B, 1]
        positions = torch.arange(input_ids.size(1), device=input_ids.device).unsqueeze(0)  # [1, T]
        # Position t of row b reads position flip[b, t]: the real tokens reversed, padding where it was.
        # The map is its own inverse, so the same gather puts the backward states back in text order.
        flip = torch.where(positions < lengths, lengths - 1 - positions, positions).unsqueeze(-1)  # [B, T, 1]
        x = self.embedding(input_ids) * valid
        for layer, (fwd, bwd) in enumerate(zip(self.forward_grus, self.backward_grus)):
            if layer > 0:
                x = self.dropout(x)
            ahead = _recur(fwd, x)
            behind = _recur(bwd, x.gather(1, flip.expand(-1, -1, x.size(2))))
            behind = behind.gather(1, flip.expand(-1, -1, behind.size(2)))
            # Zero the padding positions' states: they never reach a real position, and zeros keep them inert.
            x = torch.cat([ahead, behind], dim=2) * valid  # [B, T, 2H]
        return self.head(self.dropout(self.norm(self._pool(x, valid, lengths))))

    def _pool(self, h: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, T, F] states -> [B, F] over real tokens only; an all-padding row gives zeros."""
        if self.pooling == "mean":
            return h.sum(dim=1) / lengths.clamp(min=1).to(h.dtype)
        if self.pooling == "max":
            # GRU states lie in (-1, 1), so -2 at padding never wins where a real token exists.
            pooled = (h - 2.0 * (1.0 - valid)).amax(dim=1)
            return pooled * (lengths > 0).to(h.dtype)
        scores = self.attention(h).masked_fill(valid == 0, MASKED_SCORE)  # [B, T, 1]
        weights = torch.softmax(scores.float(), dim=1).to(h.dtype) * valid  # all-padding row: weights 0
        return (weights * h).sum(dim=1)


class TfidfLinear(nn.Module):
    """Logistic regression over TF-IDF-weighted words and hashed word bigrams, its weights fit outside torch
    (worker/ml/tfidf.py) and held as buffers.

    Every occurrence of a feature f adds idf_f * w_f to the text's class scores, and the sum is divided by the
    square root of the occurrences' summed idf_f^2: the dot product of w with the text's L2-normalised TF-IDF
    vector, computed with lookups and sums only (so it exports), and exactly so whenever no feature repeats
    within a text. Only the bigram buckets the fit kept own a row of weights: `bigram_rows` maps a bucket to its
    row, and row 0 (all zeros) stands for every other bucket, so 262k buckets cost 1 MiB of int32 plus one row
    per kept bigram.
    """

    def __init__(self, *, word_weight: torch.Tensor, word_idf2: torch.Tensor, bigram_rows: torch.Tensor,
                 bigram_weight: torch.Tensor, bigram_idf2: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.buckets = len(bigram_rows)
        self.register_buffer("word_weight", word_weight.float())  # [V, C]: idf_f * w_f
        self.register_buffer("word_idf2", word_idf2.float().reshape(-1, 1))  # [V, 1]; 0 for unseen words
        self.register_buffer("bigram_rows", bigram_rows.to(torch.int32).reshape(-1, 1))  # [buckets, 1]
        self.register_buffer("bigram_weight", bigram_weight.float())  # [K + 1, C]
        self.register_buffer("bigram_idf2", bigram_idf2.float().reshape(-1, 1))  # [K + 1, 1]
        self.register_buffer("bias", bias.float())  # [C]

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class scores [B, C] for input_ids [B, T] and a float mask [B, T]."""
        bigram_mask = mask[:, :-1] * mask[:, 1:]
        rows = F.embedding(_bigram_ids(input_ids, self.buckets), self.bigram_rows).squeeze(-1)  # [B, T-1]
        total = (F.embedding(input_ids, self.word_weight) * mask.unsqueeze(-1)).sum(dim=1)
        total = total + (F.embedding(rows, self.bigram_weight) * bigram_mask.unsqueeze(-1)).sum(dim=1)
        norm2 = (F.embedding(input_ids, self.word_idf2).squeeze(-1) * mask).sum(dim=1)
        norm2 = norm2 + (F.embedding(rows, self.bigram_idf2).squeeze(-1) * bigram_mask).sum(dim=1)
        # A text with no known feature scores the bias alone, as scikit-learn's all-zero row would.
        return total / norm2.clamp(min=1e-12).sqrt().unsqueeze(-1) + self.bias


class Blend(nn.Module):
    """A network and a TfidfLinear, their class probabilities averaged: (1 - weight) * p_net + weight * p_tfidf.

    Returns log-probabilities, which are logits like any other: softmax gives back the averaged probabilities.
    """

    def __init__(self, network: nn.Module, linear: TfidfLinear, weight: float) -> None:
        super().__init__()
        self.network = network
        self.linear = linear
        self.weight = float(weight)

    @property
    def head(self) -> nn.Linear:
        """The network's output layer (what callers size the class axis by)."""
        return self.network.head

    def for_export(self) -> nn.Module:
        """The blend of the network's export form (if it has one) and the same TF-IDF member."""
        network = self.network.for_export() if hasattr(self.network, "for_export") else self.network
        return Blend(network, self.linear, self.weight).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        deep = F.log_softmax(self.network(input_ids, attention_mask).float(), dim=1) + math.log(1.0 - self.weight)
        wide = F.log_softmax(self.linear(input_ids, mask), dim=1) + math.log(self.weight)
        # log(a + b) from log a and log b without leaving log space: no underflow to log(0) for confident models.
        return torch.logsumexp(torch.stack([deep, wide]), dim=0)


def build_model(spec: ModelSpec, *, vocab_size: int, num_classes: int, base_model_dir: Path | None = None,
                ) -> nn.Module:
    """The classifier named by spec.name, freshly initialised (encoder: the base model in `base_model_dir`
    with a new head)."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    if spec.name == "encoder":
        if base_model_dir is None:
            raise ValueError("model encoder needs base_model_dir")
        from worker.ml.encoder import EncoderClassifier  # transformers loads only for encoder jobs

        return EncoderClassifier(spec, base_model_dir, num_classes)
    if spec.name == "textcnn":
        return TextCNN(spec, vocab_size, num_classes)
    if spec.name == "fasttext":
        return FastText(spec, vocab_size, num_classes)
    if spec.name == "bigru":
        return BiGRU(spec, vocab_size, num_classes)
    raise ValueError(f"unknown model {spec.name!r}")
