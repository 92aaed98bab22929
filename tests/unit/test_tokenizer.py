"""Tokenizer fit/encode contracts, and the API's torch-free import."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.ml.tokenizer import MIN_TOKENS, PAD_ID, UNK_ID, TextEncoder, fit_tokenizer
from core.spec import TokenizerSpec

pytestmark = pytest.mark.unit

TEXTS = ["The cat sat on the mat.", "A dog barked, loudly!", "ＣＡＴ and DOG?", "the the the cat"]


@pytest.fixture()
def encoder() -> TextEncoder:
    return TextEncoder(fit_tokenizer(TEXTS, TokenizerSpec(vocab_size=100)), max_length=8)


def test_special_tokens_have_fixed_ids(encoder):
    vocab = encoder.tokenizer.get_vocab()
    assert vocab["[PAD]"] == PAD_ID == 0
    assert vocab["[UNK]"] == UNK_ID == 1


def test_normalises_lowercases_and_splits_punctuation(encoder):
    vocab = encoder.tokenizer.get_vocab()
    assert {"cat", "dog", "the", ".", ",", "!", "?"} <= vocab.keys()
    assert "CAT" not in vocab and "ＣＡＴ" not in vocab  # full-width letters fold to ASCII, then lower-case
    ids, _ = encoder.encode(["ＣＡＴ"])
    assert ids[0, 0] == vocab["cat"]


def test_lowercase_off_keeps_case():
    tok = fit_tokenizer(["Cat cat"], TokenizerSpec(vocab_size=100, lowercase=False))
    assert {"Cat", "cat"} <= tok.get_vocab().keys()


def test_vocab_size_and_min_frequency_limit_the_vocabulary():
    texts = [f"common word{i}" for i in range(300)]
    tok = fit_tokenizer(texts, TokenizerSpec(vocab_size=100))
    assert tok.get_vocab_size() == 100
    tok = fit_tokenizer(texts, TokenizerSpec(vocab_size=1000, min_frequency=2))
    assert set(tok.get_vocab()) == {"[PAD]", "[UNK]", "common"}


def test_encode_shapes_dtypes_and_padding(encoder):
    ids, mask = encoder.encode(["the cat", "a dog barked , loudly !"])
    assert ids.dtype == mask.dtype == np.int64
    assert ids.shape == mask.shape == (2, 6)  # the longest text's 6 tokens
    assert mask.tolist() == [[1, 1, 0, 0, 0, 0], [1] * 6]
    assert (ids[0, 2:] == PAD_ID).all()
    assert (ids[mask == 1] != PAD_ID).all()


def test_encode_truncates_to_max_length(encoder):
    ids, mask = encoder.encode(["cat " * 50, "dog"])
    assert ids.shape == (2, 8)
    assert mask[0].sum() == 8 and mask[1].sum() == 1


def test_encode_pads_to_min_length(encoder):
    ids, mask = encoder.encode(["cat", ""])
    assert ids.shape == (2, MIN_TOKENS)
    assert mask.tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    wide = TextEncoder(encoder.tokenizer, max_length=20, min_length=7)
    assert wide.encode(["cat"])[0].shape == (1, 7)


def test_encode_empty_batch_and_unknown_words(encoder):
    ids, mask = encoder.encode([])
    assert ids.shape == mask.shape == (0, MIN_TOKENS)
    ids, _ = encoder.encode(["zebra cat"])
    assert ids[0, 0] == UNK_ID


def test_min_length_must_not_exceed_max_length(encoder):
    with pytest.raises(ValueError):
        TextEncoder(encoder.tokenizer, max_length=4, min_length=5)


def test_save_load_round_trip(encoder, tmp_path: Path):
    encoder.save(tmp_path / "tokenizer.json")
    loaded = TextEncoder.from_file(tmp_path / "tokenizer.json", max_length=8)
    assert loaded.vocab_size == encoder.vocab_size
    batch = ["The CAT sat!", "", "unknown words here", "dog " * 30]
    for a, b in zip(encoder.encode(batch), loaded.encode(batch)):
        np.testing.assert_array_equal(a, b)


def test_serving_modules_do_not_import_torch():
    code = "import sys, core.ml.predictor, core.ml.tokenizer; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -----------------------------------------------------------------------------
# subword tokenizers

SYLLABLES = "ka lo mi ne ru ta po si".split()
# 400 words made of 2-3 syllables; "rutaka" and "posine" never occur, but their syllables do.
_rng = random.Random(0)
WORDS = sorted({"".join(_rng.choices(SYLLABLES, k=_rng.randint(2, 3))) for _ in range(600)} - {"rutaka", "posine"})
CORPUS = [" ".join(_rng.choices(WORDS, k=8)) for _ in range(300)]


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_subword_tokenizers_split_unseen_words_into_known_pieces(kind):
    tok = fit_tokenizer(CORPUS, TokenizerSpec(kind=kind, vocab_size=200))
    assert tok.token_to_id("[PAD]") == PAD_ID and tok.token_to_id("[UNK]") == UNK_ID
    encoder = TextEncoder(tok, max_length=32)
    ids, mask = encoder.encode(["rutaka posine"])  # neither word is in the corpus
    real = ids[0, mask[0] == 1]
    assert len(real) > 2 and UNK_ID not in real


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_subword_vocab_size_and_min_frequency_are_respected(kind):
    big = fit_tokenizer(CORPUS, TokenizerSpec(kind=kind, vocab_size=10_000))
    small = fit_tokenizer(CORPUS, TokenizerSpec(kind=kind, vocab_size=100))
    assert small.get_vocab_size() <= 100 < big.get_vocab_size()
    # Merges of pairs seen fewer than 100 times are not learned: fewer units than with min_frequency=1.
    rare = fit_tokenizer(CORPUS, TokenizerSpec(kind=kind, vocab_size=10_000, min_frequency=100))
    assert rare.get_vocab_size() < big.get_vocab_size()


def test_subword_alphabet_is_capped_to_fit_vocab_size():
    texts = ["".join(chr(0x4E00 + i) for i in range(k, k + 20)) for k in range(0, 400, 20)]  # 400 distinct CJK
    tok = fit_tokenizer(texts, TokenizerSpec(kind="bpe", vocab_size=100))
    assert tok.get_vocab_size() <= 100
    ids, _ = TextEncoder(tok, 64).encode([texts[-1]])
    assert UNK_ID in ids  # characters left out of the alphabet become [UNK]


@pytest.mark.parametrize("kind", ["word", "bpe", "wordpiece"])
def test_saved_tokenizers_load_without_torch(tmp_path: Path, kind):
    encoder = TextEncoder(fit_tokenizer(CORPUS + TEXTS, TokenizerSpec(kind=kind, vocab_size=300)), max_length=16)
    path = tmp_path / "tokenizer.json"
    encoder.save(path)
    batch = ["The CAT sat!", "", "rutaka posine kalo", "dog " * 30]
    loaded = TextEncoder.from_file(path, max_length=16)
    for a, b in zip(encoder.encode(batch), loaded.encode(batch)):
        np.testing.assert_array_equal(a, b)
    code = ("import json, sys; from core.ml.tokenizer import TextEncoder; "
            f"ids, _ = TextEncoder.from_file({str(path)!r}, 16).encode({batch!r}); "
            "print(json.dumps([ids.tolist(), 'torch' in sys.modules]))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    ids, torch_loaded = json.loads(out.stdout)
    assert ids == encoder.encode(batch)[0].tolist() and torch_loaded is False
