"""Fixtures of the integration tier: an empty event store and empty read tables, on
each backend in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from api.settings import Settings
from read_side.runtime.engine import create_read_engine, create_read_tables
from tests.support import make_settings, open_ledger
from write_side import TaskLedger


@pytest.fixture
def fresh_settings(fresh_database: str | None, tmp_path: Path) -> Settings:
    """Settings on an empty log and empty read tables."""
    return make_settings(fresh_database, tmp_path)


@pytest.fixture
def ledger(fresh_settings: Settings) -> Iterator[TaskLedger]:
    app = open_ledger(fresh_settings)
    yield app
    app.close()


@pytest.fixture
def engine(fresh_settings: Settings) -> Iterator[Engine]:
    engine = create_read_engine(fresh_settings.storage.read_url)
    create_read_tables(engine)
    yield engine
    engine.dispose()
