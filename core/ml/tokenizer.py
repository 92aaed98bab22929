"""Word, character or subword (BPE, WordPiece) tokenizer: fit on training texts, encode batches to padded id
arrays. NO torch import.

The API serves with this module too, so it depends only on numpy and HF `tokenizers`; everything a kind does to
text is inside tokenizer.json (normalizer, pre-tokenizer, vocabulary), so a model bundle needs nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from core.scripts import NO_SPACE_SCRIPTS, script_mix, written_without_spaces
from core.spec import TokenizerSpec

PAD_ID = 0
UNK_ID = 1
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
# WordPiece's marker for a piece that continues a word ("play", "##ing"), as in BERT.
WORDPIECE_PREFIX = "##"
# Longest word WordPiece splits; longer ones (URLs, hashes) become one [UNK] rather than dozens of pieces.
WORDPIECE_MAX_CHARS = 100
# Padding tokens of pretrained tokenizers (BERT, RoBERTa/XLM-R): padded positions carry the model's own pad id.
PRETRAINED_PAD_TOKENS = ("[PAD]", "<pad>")
# Shortest batch width we emit: the widest default TextCNN kernel is 5 tokens, so a batch of one-word texts
# still fills at least one full convolution window.
MIN_TOKENS = 5
# One character of a script written without spaces, with the combining marks that follow it (a Thai consonant
# and its tone mark stay one token): the unit the `char` kind splits those scripts into. The Japanese long-vowel
# mark ー (and its half-width form) is in Unicode's Common script, not Katakana, so it is named on its own.
NO_SPACE_CHARACTER = ("[" + "".join(rf"\p{{{name}}}" for name in NO_SPACE_SCRIPTS) + r"\x{30FC}\x{FF70}]"
                      r"\p{M}*")


def resolve_kind(kind: str, texts: Sequence[str]) -> str:
    """The tokenizer kind `auto` stands for on these texts: `char` when enough of their letters are in scripts
    written without spaces (core/scripts.py), else `word`. Other kinds are returned as they are."""
    if kind != "auto":
        return kind
    return "char" if written_without_spaces(script_mix(texts)) else "word"


def _pre_tokenizer(kind: str) -> pre_tokenizers.PreTokenizer:
    # Whitespace splits on \w+|[^\w\s]+, so "Paris?" gives "Paris" and "?": question marks carry signal.
    if kind != "char":
        return pre_tokenizers.Whitespace()
    # Characters of the no-space scripts first, then words as for `word`: "iPhone12" and "3pm" stay whole in
    # Chinese text, and the models' token bigrams become character bigrams there.
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(NO_SPACE_CHARACTER), behavior="isolated"),
                                    pre_tokenizers.Whitespace()])


def fit_tokenizer(texts: Sequence[str], spec: TokenizerSpec) -> Tokenizer:
    """Train the vocabulary spec.kind names on `texts`: whole words (`char`: with every character of the scripts
    written without spaces a token of its own), BPE merges or WordPiece units; `auto` is resolved first."""
    kind = resolve_kind(spec.kind, texts)
    special = [PAD_TOKEN, UNK_TOKEN]  # list order fixes the ids: PAD_ID=0, UNK_ID=1
    common = {"vocab_size": spec.vocab_size, "min_frequency": spec.min_frequency, "special_tokens": special,
              "show_progress": False}
    if kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        # Cap the starting alphabet so vocab_size holds even on text with thousands of distinct characters
        # (rarer characters become [UNK]); half the budget leaves room for the merges that make BPE useful.
        trainer = trainers.BpeTrainer(limit_alphabet=max(spec.vocab_size // 2, 1), **common)
    elif kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN, continuing_subword_prefix=WORDPIECE_PREFIX,
                                               max_input_chars_per_word=WORDPIECE_MAX_CHARS))
        tokenizer.decoder = decoders.WordPiece(prefix=WORDPIECE_PREFIX)
        trainer = trainers.WordPieceTrainer(limit_alphabet=max(spec.vocab_size // 2, 1),
                                            continuing_subword_prefix=WORDPIECE_PREFIX, **common)
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
        trainer = trainers.WordLevelTrainer(**common)
    # NFKC folds look-alike code points (full-width letters, ligatures) so they share one vocabulary entry.
    steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if spec.lowercase else [])
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = _pre_tokenizer(kind)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    assert tokenizer.token_to_id(PAD_TOKEN) == PAD_ID and tokenizer.token_to_id(UNK_TOKEN) == UNK_ID
    return tokenizer


class TextEncoder:
    """Turns a batch of texts into right-padded int64 `input_ids` and `attention_mask` arrays."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, min_length: int = MIN_TOKENS) -> None:
        if not 1 <= min_length <= max_length:
            raise ValueError(f"need 1 <= min_length ({min_length}) <= max_length ({max_length})")
        self.tokenizer = tokenizer
        # A pretrained model's file keeps the cut it was trained with (at most the model's positions).
        if tokenizer.post_processor is not None and tokenizer.truncation is not None:
            max_length = min(max_length, tokenizer.truncation["max_length"])
            min_length = min(min_length, max_length)
        self.max_length = max_length
        self.min_length = min_length
        # A pretrained model's tokenizer.json (model.name encoder) wraps each text in its special tokens
        # ([CLS] ... [SEP]) through a post-processor; ours have none. Its own truncation keeps the closing token,
        # and written into tokenizer.json it makes the file alone encode as the model was trained; the padding
        # such files often ship (fixed to 128) is ours to do here.
        self.special_tokens = tokenizer.post_processor is not None
        self.pad_id = PAD_ID
        if self.special_tokens:
            tokenizer.no_padding()
            tokenizer.enable_truncation(self.max_length)
            self.pad_id = next((i for i in map(tokenizer.token_to_id, PRETRAINED_PAD_TOKENS) if i is not None),
                               PAD_ID)

    @classmethod
    def from_file(cls, path: str | Path, max_length: int) -> TextEncoder:
        """Load a tokenizer.json written by `save`."""
        return cls(Tokenizer.from_file(str(path)), max_length)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as tokenizer.json (vocabulary, normalizer and pre-tokenizer included)."""
        self.tokenizer.save(str(path))

    def to_json(self) -> str:
        """The tokenizer.json text (what `save` writes), e.g. to keep inside a training checkpoint."""
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str, max_length: int) -> TextEncoder:
        """The inverse of `to_json`."""
        return cls(Tokenizer.from_str(text), max_length)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the embedding table's height)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (input_ids, attention_mask), int64 [B, T], T = longest text clipped to [min_length, max_length]."""
        # encode_batch runs in Rust on all cores; truncation and padding are cheaper done here with numpy
        # than by mutating the shared tokenizer's settings per call.
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=self.special_tokens)
        rows = [enc.ids[: self.max_length] for enc in encodings]
        width = min(max([self.min_length, *map(len, rows)]), self.max_length)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
        return input_ids, attention_mask
