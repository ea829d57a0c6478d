"""Rater names: what a name may look like, and when two names are the same rater.

A name is normalised with Unicode NFKC (full-width ``ａｌｉｃｅ`` becomes ``alice``) and its
runs of white space become one space; two names are the same rater when their case-folded
forms are equal (``Alice``, ``ALICE`` and ``ａｌｉｃｅ`` are one rater). NFKC does not map
letters of one script to look-alikes of another (Cyrillic ``а`` stays Cyrillic), so a name may
not mix scripts: ``аlice`` with a Cyrillic ``а`` is refused instead of becoming a second
"alice". Chinese, Japanese and Korean names may mix the scripts those languages write together.
"""

from __future__ import annotations

import re
import unicodedata

# Shown on the results page and written to CSV: letters, digits and a little punctuation,
# starting with a letter or digit (so a spreadsheet never reads it as a formula).
_NAME = re.compile(r"\w[\w .'-]{0,39}")
# Scripts that one name may combine (Unicode names start with the script: "HIRAGANA LETTER A").
_SCRIPT_FAMILIES = ({"CJK", "HIRAGANA", "KATAKANA"}, {"CJK", "HANGUL"}, {"CJK", "BOPOMOFO"})

RULE = "Use 1 to 40 letters (of one script), digits, spaces or . ' -"


def clean_name(raw: str) -> str:
    """The name a rater typed, normalised for display (NFKC, single spaces).

    Raises:
        ValueError: The name breaks :data:`RULE`; the message is that rule.
    """
    name = " ".join(unicodedata.normalize("NFKC", raw).split())
    if not _NAME.fullmatch(name) or not _one_script(name):
        raise ValueError(RULE)
    return name


def name_key(name: str) -> str:
    """What identifies a rater: the normalised name, case-folded."""
    return " ".join(unicodedata.normalize("NFKC", name).split()).casefold()


def _one_script(name: str) -> bool:
    """Whether the letters of ``name`` come from one script (or one CJK family)."""
    scripts = {unicodedata.name(ch, "?").split()[0] for ch in name if ch.isalpha()}
    return len(scripts) <= 1 or any(scripts <= family for family in _SCRIPT_FAMILIES)
