"""The projector's statements compiled once for psycopg (read_side.projector): what
cannot be compiled once is refused when the projector is made, not on every batch."""

from __future__ import annotations

import pytest
from sqlalchemy import bindparam, select

from read_side.projector import _for_psycopg
from read_side.tables import projection_position, task_view


def test_a_statement_keeps_its_own_values_by_their_compiled_names() -> None:
    at = projection_position.c
    statement = select(at.position).where(at.name == "tasks", at.position > bindparam("after"))
    text, values = _for_psycopg(statement)
    assert list(values.values()) == ["tasks"]
    (name,) = values
    assert f"%({name})s" in text and "%(after)s" in text


def test_an_expanding_in_is_refused() -> None:
    # Its placeholder is rendered per execution: compiled once, PostgreSQL would refuse
    # the statement on every batch, and the projector would never move again.
    statement = select(task_view.c.id).where(task_view.c.id.in_(bindparam("ids", expanding=True)))
    with pytest.raises(TypeError, match="expanding"):
        _for_psycopg(statement)
