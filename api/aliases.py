"""Spellings of the list's parameters that frontends written against other backends of
this API send, mapped to the canonical ones at the edge: the routes see one name each."""

from __future__ import annotations

from typing import TypeVar

from api.errors import invalid_query

T = TypeVar("T")

# status values that mean a canonical one.
STATUS_ALIASES = {"incomplete": "pending", "complete": "completed"}


def either(name: str, value: T | None, alias: str, alias_value: T | None) -> T | None:
    """The parameter sent as ``name`` or as ``alias``; both sent must agree (422)."""
    if alias_value is None:
        return value
    if value is not None and value != alias_value:
        raise invalid_query(
            alias, alias_value, f"{alias} is another name for {name}, and they differ"
        )
    return alias_value
