"""The read model's version follows its tables: a changed table with the same declared
version would be served by processes whose code expects the old one, and never rebuilt."""

from __future__ import annotations

from sqlalchemy import Column, Integer

from read_side.tables import LIVE_TABLES, ViewTables
from read_side.versions import READ_MODEL_VERSION, SHAPES, shape_of


def test_the_tables_are_the_shape_recorded_for_the_declared_version() -> None:
    assert shape_of() == SHAPES.get(READ_MODEL_VERSION), (
        "the read tables changed: declare a new READ_MODEL_VERSION in read_side/versions.py "
        f"and record its shape there ({shape_of()!r})"
    )


def test_every_version_has_its_own_shape_or_logic() -> None:
    # Versions only grow; a new one is recorded beside the old ones.
    assert sorted(SHAPES) == list(range(1, READ_MODEL_VERSION + 1))


def test_any_change_of_a_column_changes_the_shape() -> None:
    tables = ViewTables.copy("shape_")
    before = shape_of(tables)
    tables.task.append_column(Column("colour", Integer))
    assert shape_of(tables) != before
    # The tag table is part of the shape too.
    retagged = ViewTables.copy("shape_")
    retagged.tag.append_column(Column("colour", Integer))
    assert shape_of(retagged) != shape_of(ViewTables.copy("shape_"))
    # A build's name is not its shape.
    assert shape_of(ViewTables.of_build("_v9_b9")) == shape_of(LIVE_TABLES)
