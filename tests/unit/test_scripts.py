"""core/scripts.py: which writing systems texts use (the `scripts` of a dataset upload), and whether they need the
character tokenizer."""

from __future__ import annotations

import pytest

from core.scripts import CHARACTER_SHARE, NO_SPACE_SCRIPTS, script_mix, script_of, written_without_spaces

pytestmark = pytest.mark.unit

CHINESE = ["今天天气很好，我们去公园散步吧。", "这家餐厅的饺子非常好吃。"]
# kanji, hiragana, katakana and the prolonged sound mark ー (in ラーメン, コーヒー)
JAPANESE = ["今日は雨が降っています。", "ラーメンとコーヒーが好きです。"]
THAI = ["ทีมชาติไทยชนะการแข่งขันฟุตบอลเมื่อคืนนี้", "ต้มยำกุ้งรสชาติเผ็ดและเปรี้ยว"]
KOREAN = ["오늘 날씨가 정말 좋네요", "김치찌개를 먹고 싶어요"]
ENGLISH = ["The team won the match.", "Stir the sauce over low heat."]
# Chinese with English brand names and numbers: iPhone12, 5999
MIXED = ["苹果发布了新款iPhone12，售价5999元。", "我在网上用Google搜索了很多编程教程"]


@pytest.mark.parametrize("char, script", [
    ("中", "Han"), ("々", "Han"), ("あ", "Hiragana"), ("ア", "Katakana"), ("ー", "Katakana"), ("ｱ", "Katakana"),
    ("ก", "Thai"), ("ລ", "Lao"), ("ក", "Khmer"), ("က", "Myanmar"), ("ㄅ", "Bopomofo"), ("가", "Hangul"),
    ("a", "Latin"), ("é", "Latin"), ("Ж", "Cyrillic"), ("ب", "Arabic"), ("अ", "Devanagari"),
])
def test_script_of_a_letter(char, script):
    assert script_of(char) == script


@pytest.mark.parametrize("char", [" ", "1", "１", "，", "。", "!", "\u0e48", "😀"])  # \u0e48: Thai tone mark (Mn)
def test_script_of_anything_but_a_letter_is_none(char):
    assert script_of(char) is None


def test_chinese_is_all_han():
    assert script_mix(CHINESE) == {"Han": 1.0}
    assert written_without_spaces(script_mix(CHINESE))


def test_japanese_mixes_han_hiragana_and_katakana():
    mix = script_mix(JAPANESE)
    # 25 letters: 今日雨降好 (5 Han), ラーメン コーヒー (8 Katakana, ー included), は が っ て い ま す と が き で す
    # (12 Hiragana); punctuation is no letter. Largest first.
    assert list(mix.items()) == [("Hiragana", 0.48), ("Katakana", 0.32), ("Han", 0.2)]
    assert script_mix(["ー"]) == {"Katakana": 1.0}
    assert written_without_spaces(mix)


def test_thai_is_all_thai_tone_marks_and_vowel_signs_aside():
    assert script_mix(THAI) == {"Thai": 1.0}
    assert written_without_spaces(script_mix(THAI))


def test_korean_uses_spaces_so_hangul_is_a_word_script():
    assert script_mix(KOREAN) == {"Hangul": 1.0}
    assert "Hangul" not in NO_SPACE_SCRIPTS
    assert not written_without_spaces(script_mix(KOREAN))


def test_english_is_latin():
    assert script_mix(ENGLISH) == {"Latin": 1.0}
    assert not written_without_spaces(script_mix(ENGLISH))


def test_chinese_with_brand_names_and_numbers():
    mix = script_mix(MIXED)
    # 24 Han letters, 12 Latin ones (iPhone, Google); digits and full-width punctuation are no letters
    assert list(mix.items()) == [("Han", 0.667), ("Latin", 0.333)]
    assert written_without_spaces(mix)


def test_rounding_drops_shares_of_zero_and_empty_input_is_empty():
    assert script_mix([], digits=3) == {}
    assert script_mix(["123 !?", ""]) == {}
    texts = ["a" * 10_000 + "中"]
    assert script_mix(texts) == {"Latin": 1.0}  # 1/10001 rounds to 0: left out
    assert script_mix(texts, digits=5) == {"Latin": 0.9999, "Han": 0.0001}


def test_a_few_stray_ideographs_do_not_make_english_a_character_dataset():
    below = {"Latin": 1 - CHARACTER_SHARE + 0.001, "Han": CHARACTER_SHARE - 0.001}
    at = {"Latin": 1 - CHARACTER_SHARE, "Han": CHARACTER_SHARE}
    assert not written_without_spaces(below)
    assert written_without_spaces(at)
    # the no-space scripts count together: Japanese split over three of them
    assert written_without_spaces({"Latin": 0.94, "Han": 0.02, "Hiragana": 0.02, "Katakana": 0.02})
    assert not written_without_spaces({})
    english_with_a_word_of_chinese = ["I had dim sum (点心) in Hong Kong and it was great, everyone should try it"]
    assert not written_without_spaces(script_mix(english_with_a_word_of_chinese))


def test_full_and_half_width_forms_count_as_their_script():
    assert script_mix(["ＡＢＣ"]) == {"Latin": 1.0}
    assert script_of("\uffa1") == "Hangul"  # HALFWIDTH HANGUL LETTER KIYEOK
