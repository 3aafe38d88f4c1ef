"""Search folding: what a search treats as the same text, on every backend alike."""

from __future__ import annotations

import pytest

from read_side.folding import fold


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("istanbul", "İstanbul"),  # the dot of İ is redundant once folded
        ("İSTANBUL", "istanbul"),
        ("strasse", "Straße"),  # full case folding, not lower()
        ("σοφος", "ΣΟΦΟΣ"),
        ("σοφοσ", "σοφος"),  # final sigma
        ("café", "CAFE\u0301"),  # canonically equivalent spellings
        ("École", "école"),
    ],
)
def test_a_search_finds_text_however_its_case_and_composition_were_typed(
    typed: str, stored: str
) -> None:
    assert fold(typed) in fold(stored)


@pytest.mark.parametrize(
    ("typed", "stored"), [("cafe", "café"), ("ano", "año"), ("i", "\u0131")]
)  # \u0131: dotless i
def test_accents_and_distinct_letters_still_count(typed: str, stored: str) -> None:
    assert fold(typed) not in fold(stored)


def test_folded_text_is_composed() -> None:
    assert fold("E\u0301") == "\u00e9"
