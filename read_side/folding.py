"""Search folding: the one form in which task text and search text are compared.

Folded here, in Python, for both backends: SQLite's ``lower()`` folds ASCII only, and
PostgreSQL's follows the database's locale (``lower('İ')`` is ``i`` under one, ``İ``
under another), so comparing in SQL would make a search find different tasks on each.

The rules (Unicode's canonical caseless match, plus one step):
- case is ignored, by full case folding: "Straße" is found by "STRASSE", "ΣΟΦΟΣ" by
  "σοφος" (final sigma included);
- canonically equivalent spellings are one: "café" typed composed or decomposed;
- accents count: "cafe" does not find "café";
- a dot above a soft-dotted letter (i, j) is dropped: it is redundant by Unicode's own
  definition, and it is what folding "İ" leaves behind, so "istanbul" finds "İstanbul".
"""

from __future__ import annotations

import re
import unicodedata

# After NFD and case folding, "İ" is "i" followed by U+0307 COMBINING DOT ABOVE.
_REDUNDANT_DOT = re.compile("([ij])\u0307")


def fold(text: str) -> str:
    if text.isascii():
        # Nothing to decompose, no dot to drop, and case folding is lower-casing: the
        # same answer, several times faster, for most titles of a replay.
        return text.lower()
    folded = unicodedata.normalize("NFD", text).casefold()
    folded = _REDUNDANT_DOT.sub(r"\1", folded)
    return unicodedata.normalize("NFC", folded)


def fold_or_none(text: str | None) -> str | None:
    return None if text is None else fold(text)
