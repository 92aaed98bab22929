"""Which writing systems a set of texts uses, and whether they are written without spaces between words.

Both roles need it: the API reports a dataset's script mix and resolves `tokenizer.kind: auto` from it; the
tokenizer splits the scripts below into characters. Python's unicodedata has no script property, so a letter's
script is read off its Unicode name ("CJK UNIFIED IDEOGRAPH-4E2D", "LATIN SMALL LETTER A", "THAI CHARACTER KO
KAI"): right for every script a classifier is likely to meet, and no extra dependency.
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from collections.abc import Iterable

# Scripts whose words are not separated by spaces: a word splitter sees a whole sentence as one "word".
# Korean (Hangul) and Vietnamese use spaces; Japanese mixes Han with both kana.
NO_SPACE_SCRIPTS = ("Han", "Hiragana", "Katakana", "Thai", "Lao", "Khmer", "Myanmar", "Tibetan", "Bopomofo", "Yi")

# Unicode name prefixes that are not the script's own name.
_NAME_TO_SCRIPT = {"CJK": "Han", "IDEOGRAPHIC": "Han", "KANGXI": "Han", "KATAKANA-HIRAGANA": "Katakana"}

# With at least this share of letters in NO_SPACE_SCRIPTS, `auto` picks the character tokenizer. It splits only
# those scripts into characters and keeps every other word whole, so mixed text (Chinese with English brand
# names) loses nothing; the share only guards space-separated data with a few stray ideographs.
CHARACTER_SHARE = 0.05


@functools.lru_cache(maxsize=65_536)
def script_of(char: str) -> str | None:
    """The script of a letter (`Han`, `Latin`, `Thai`...), or None for anything that is not a letter."""
    if not unicodedata.category(char).startswith("L"):
        return None
    # Full- and half-width forms ("ＡＢＣ", "ｶﾀｶﾅ") are named by their width: NFKC, as the tokenizer applies, gives
    # the letter they stand for.
    char = unicodedata.normalize("NFKC", char)[:1] or char
    first = unicodedata.name(char, "").split(" ", 1)[0]
    if not first:
        return "Other"
    return _NAME_TO_SCRIPT.get(first, first.capitalize())


def script_mix(texts: Iterable[str], *, digits: int = 3) -> dict[str, float]:
    """Share of letters per script over `texts`, largest first, rounded to `digits` (shares that round to 0 are
    left out). Characters are counted once per distinct character first, so a large dataset costs one pass."""
    chars = Counter()
    for text in texts:
        chars.update(text)
    scripts: Counter[str] = Counter()
    for char, count in chars.items():
        if (script := script_of(char)) is not None:
            scripts[script] += count
    total = sum(scripts.values())
    if not total:
        return {}
    shares = {name: round(count / total, digits) for name, count in scripts.most_common()}
    return {name: share for name, share in shares.items() if share > 0}


def written_without_spaces(mix: dict[str, float]) -> bool:
    """Whether text with this script mix needs the character tokenizer (see CHARACTER_SHARE)."""
    return sum(share for name, share in mix.items() if name in NO_SPACE_SCRIPTS) >= CHARACTER_SHARE
