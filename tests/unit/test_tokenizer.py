"""Tokenizer fit/encode contracts, and the API's torch-free import."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.ml.tokenizer import MIN_TOKENS, PAD_ID, UNK_ID, TextEncoder, fit_tokenizer, resolve_kind
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


# -----------------------------------------------------------------------------
# scripts written without spaces: `auto` resolves to `char`, which splits them into characters

CHINESE = ["今天天气很好，我们去公园散步吧。", "苹果发布了新款iPhone12，售价5999元。", "这家餐厅的饺子非常好吃"]
JAPANESE = ["今日は雨が降っています。", "ラーメンとコーヒーが好きです。"]
THAI = ["ผู้เล่นทำประตูได้สองลูก", "ต้มยำกุ้งรสชาติเผ็ด"]
KOREAN = ["오늘 날씨가 정말 좋네요", "김치찌개를 먹고 싶어요"]


def pre_tokens(tokenizer, text: str) -> list[str]:
    """What the tokenizer's normalizer and pre-tokenizer make of `text`: the units the vocabulary is made of."""
    return [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(tokenizer.normalizer.normalize_str(text))]


@pytest.mark.parametrize("texts, kind", [(CHINESE, "char"), (JAPANESE, "char"), (THAI, "char"),
                                         (KOREAN, "word"), (TEXTS, "word"), (CORPUS, "word"), ([], "word")])
def test_auto_resolves_from_the_scripts_of_the_texts(texts, kind):
    assert resolve_kind("auto", texts) == kind


@pytest.mark.parametrize("kind", ["word", "char", "bpe", "wordpiece"])
def test_explicit_kinds_are_kept_whatever_the_texts(kind):
    assert resolve_kind(kind, CHINESE) == resolve_kind(kind, TEXTS) == kind


def test_auto_fits_the_character_tokenizer_on_chinese():
    auto = fit_tokenizer(CHINESE, TokenizerSpec(vocab_size=500))
    char = fit_tokenizer(CHINESE, TokenizerSpec(kind="char", vocab_size=500))
    assert auto.to_str() == char.to_str()
    assert {"天", "气", "饺", "iphone12", "5999", ",", "。"} <= auto.get_vocab().keys()  # NFKC: ， is ,
    # the word tokenizer sees a whole clause as one "word": nothing is shared between two sentences
    word = fit_tokenizer(CHINESE, TokenizerSpec(kind="word", vocab_size=500))
    assert "今天天气很好" in word.get_vocab()


def test_char_splits_chinese_into_characters_and_keeps_latin_words_and_numbers_whole():
    tok = fit_tokenizer(CHINESE, TokenizerSpec(kind="char", vocab_size=500))
    assert pre_tokens(tok, "苹果发布了新款iPhone12，售价5999元") == [
        "苹", "果", "发", "布", "了", "新", "款", "iphone12", ",", "售", "价", "5999", "元"]
    assert pre_tokens(tok, "我买了iPhone12 Pro") == ["我", "买", "了", "iphone12", "pro"]
    assert tok.encode("新款iPhone12", add_special_tokens=False).tokens == ["新", "款", "iphone12"]


def test_char_keeps_a_thai_consonant_with_its_tone_mark_and_vowel_signs():
    tok = fit_tokenizer(THAI, TokenizerSpec(kind="char", vocab_size=500))
    # ผู้ = ผ + sara uu + mai tho; ล่ = ล + mai ek: combining marks stay with the letter before them
    assert pre_tokens(tok, "ผู้เล่น") == ["ผู้", "เ", "ล่", "น"]
    assert {"ผู้", "ล่", "กุ้"} <= tok.get_vocab().keys()
    assert "\u0e48" not in tok.get_vocab() and "\u0e49" not in tok.get_vocab()  # no tone mark on its own
    ids = TextEncoder(tok, 32).encode(["ผู้เล่น"])[0][0]
    assert UNK_ID not in ids[:4]


def test_char_splits_japanese_kana_and_kanji():
    tok = fit_tokenizer(JAPANESE, TokenizerSpec(kind="char", vocab_size=500))
    assert pre_tokens(tok, "ラーメンが好き") == ["ラ", "ー", "メ", "ン", "が", "好", "き"]
    # half-width katakana folds to full width (NFKC) before splitting
    assert pre_tokens(tok, "ﾗｰﾒﾝ") == ["ラ", "ー", "メ", "ン"]


def test_char_splits_the_prolonged_sound_mark_before_a_number_or_latin_word():
    tok = fit_tokenizer(JAPANESE, TokenizerSpec(kind="char", vocab_size=500))
    assert pre_tokens(tok, "コーヒー1杯") == ["コ", "ー", "ヒ", "ー", "1", "杯"]
    assert pre_tokens(tok, "すごーーい") == ["す", "ご", "ー", "ー", "い"]


def test_char_folds_full_width_forms_and_lowercases():
    tok = fit_tokenizer(CHINESE + ["ＡＢＣ１２３的价格"], TokenizerSpec(kind="char", vocab_size=500))
    assert tok.normalizer.normalize_str("ＡＢＣ１２３") == "abc123"
    assert pre_tokens(tok, "ＡＢＣ１２３的价格") == ["abc123", "的", "价", "格"]
    folded, full = tok.encode_batch(["abc123", "ＡＢＣ１２３"], add_special_tokens=False)
    assert folded.ids == full.ids == [tok.token_to_id("abc123")]
    assert "ＡＢＣ１２３" not in tok.get_vocab() and "abc123" in tok.get_vocab()
    cased = fit_tokenizer(CHINESE + ["ＡＢＣ１２３"], TokenizerSpec(kind="char", vocab_size=500, lowercase=False))
    assert pre_tokens(cased, "ＡＢＣ１２３") == ["ABC123"]


@pytest.mark.parametrize("texts", [CHINESE, JAPANESE, THAI], ids=["zh", "ja", "th"])
def test_char_tokenizer_json_alone_reproduces_the_ids(tmp_path: Path, texts):
    """Serving (and a model bundle) reads tokenizer.json with HF tokenizers alone: no code of ours is needed to
    split the characters, fold full-width forms or lower-case."""
    encoder = TextEncoder(fit_tokenizer(texts, TokenizerSpec(vocab_size=500)), max_length=64)
    path = tmp_path / "tokenizer.json"
    encoder.save(path)
    batch = [*texts, "ＡＢＣ１２３ iPhone12 " + texts[0][:5], "unknown 未知", ""]
    code = ("import json, sys; from tokenizers import Tokenizer; "
            f"tok = Tokenizer.from_file({str(path)!r}); "
            f"ids = [e.ids for e in tok.encode_batch({batch!r}, add_special_tokens=False)]; "
            "print(json.dumps([ids, sorted(m for m in sys.modules if m.split('.')[0] in ('core', 'torch'))]))")
    # run outside the checkout, so nothing of ours could even be imported
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    ids, ours = json.loads(out.stdout)
    assert ours == []
    assert ids == [e.ids for e in encoder.tokenizer.encode_batch(batch, add_special_tokens=False)]
    expected = encoder.encode(batch)[0]
    assert [row[: len(r)] for row, r in zip(expected.tolist(), ids)] == ids
    assert all(UNK_ID not in r for r in ids[: len(texts)])  # the training texts are all in the vocabulary


def test_english_gets_the_same_ids_from_word_and_char():
    """An English model trained with `auto` (which picks `word`) or `char` is the same model: the character rule
    matches nothing in Latin text."""
    english = CORPUS + TEXTS + ["Paris? It's big.", "Café déjà vu, naïve résumé!", "3pm at the O'Neil's"]
    word = fit_tokenizer(english, TokenizerSpec(kind="word", vocab_size=2000))
    char = fit_tokenizer(english, TokenizerSpec(kind="char", vocab_size=2000))
    auto = fit_tokenizer(english, TokenizerSpec(vocab_size=2000))
    assert word.get_vocab() == char.get_vocab()
    assert auto.to_str() == word.to_str()
    batch = english + ["zebra crossing", "ＣＡＴ", ""]
    assert ([e.ids for e in char.encode_batch(batch, add_special_tokens=False)]
            == [e.ids for e in word.encode_batch(batch, add_special_tokens=False)])
