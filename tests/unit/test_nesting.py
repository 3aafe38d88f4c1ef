"""The nesting guard of api/limits.py: brackets count only outside JSON strings, across
chunk boundaries too."""

from __future__ import annotations

import pytest

from api.limits import Nesting


def deepest(*chunks: bytes) -> int:
    nesting = Nesting()
    for chunk in chunks:
        level = nesting.feed(chunk)
    return level


@pytest.mark.parametrize(
    ("body", "level"),
    [
        (b'{"title": "t"}', 1),
        (b'[[[{"a": []}]]]', 5),
        (b'{"title": "[[[[[[[[{{{{"}', 1),
        (b'{"title": "a \\" [[[[ \\\\", "b": [1]}', 2),
        (b"[" * 30_000, 30_000),
        (b"", 0),
    ],
)
def test_the_deepest_level_of_a_body(body: bytes, level: int) -> None:
    assert deepest(body) == level


def test_a_body_read_a_byte_at_a_time_counts_the_same() -> None:
    body = b'{"t": "x\\"[[[", "u": [[{"v": "\\\\"}]]}'
    assert deepest(*(body[i : i + 1] for i in range(len(body)))) == deepest(body) == 4


def test_an_escape_split_across_chunks_still_escapes() -> None:
    assert deepest(b'{"t": "a\\', b'"[[[[[", "u": 1}') == 1
    assert deepest(b'{"t": "a\\', b"", b'"[[[[[", "u": 1}') == 1  # an empty chunk between
