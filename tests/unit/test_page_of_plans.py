"""A past list (``page_of``, tasks held in memory) filters, sorts and pages as the live
list (``list_tasks``, SQL over the read tables) does, the plan's filters and sorts
included: the same tasks, run through both, give the same pages."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import pytest

from api.history import task_fields
from read_side.projector import Projector
from read_side.queries import Order, SortKey, TaskFilter, list_tasks, page_of
from read_side.runtime.engine import create_read_engine, create_read_tables
from read_side.tables import ViewTables
from tests.support import make_settings, open_ledger
from write_side import Plan

USER = "planner"
NOW = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
DAY, HOUR = timedelta(days=1), timedelta(hours=1)

# (title, priority, tags, due_at, completed): ties of priority and of due moments,
# tasks with no due date, one due at NOW exactly (not overdue: due_at < now is not),
# tags spelled in several cases, and one that folds with its dot dropped.
TASKS: list[tuple[str, str, tuple[str, ...], datetime | None, bool]] = [
    ("alpha", "high", ("Home",), NOW - DAY, False),
    ("Bravo", "none", (), None, True),
    ("charlie", "urgent", ("home", "Work"), NOW + HOUR, False),
    ("delta", "high", ("Work",), NOW - DAY, True),
    ("echo", "low", (), None, False),
    ("Foxtrot", "urgent", ("WORK", "x"), NOW + HOUR, False),
    ("golf", "high", (), None, False),
    ("hotel", "medium", ("İx",), NOW, False),
]

FILTERS = [
    TaskFilter(),
    TaskFilter(status="pending"),
    TaskFilter(status="completed", q="A"),
    TaskFilter(priorities=("high",)),
    TaskFilter(priorities=("urgent", "none")),
    TaskFilter(priorities=("nonsense",)),
    TaskFilter(tags=("work",)),
    TaskFilter(tags=("HOME", "work")),
    TaskFilter(tags=("ix",)),
    TaskFilter(tags=("nowhere",)),
    TaskFilter(due_before=NOW),
    TaskFilter(due_after=NOW),
    TaskFilter(due_after=NOW - DAY, due_before=NOW + HOUR),
    TaskFilter(overdue=True, now=NOW),
    TaskFilter(overdue=False, now=NOW),
    TaskFilter(has_due=True),
    TaskFilter(has_due=False, status="pending"),
    TaskFilter(limit=3, offset=2),
    TaskFilter(limit=2, offset=7),
]
SPECS = [
    replace(spec, sort=sort, order=order)
    for spec in FILTERS
    for sort, order in itertools.product(get_args(SortKey), get_args(Order))
]


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[dict[str, Any]]]]:
    """The read tables' engine and the same tasks as a past list holds them."""
    settings = make_settings(None, Path(tmp_path_factory.mktemp("plans")))
    ledger = open_ledger(settings)
    engine = create_read_engine(settings.storage.read_url)
    create_read_tables(engine)
    for title, priority, tags, due_at, completed in TASKS:
        plan = Plan(priority=priority, tags=tags, due_at=due_at)  # type: ignore[arg-type]
        task = ledger.add_task(USER, title, None, plan=plan).task
        assert task is not None
        if completed:
            ledger.toggle_task(USER, task.id)
    Projector(ledger, engine).catch_up()
    past = ledger.tasks_at(USER, until=datetime.now(UTC))
    yield engine, [task_fields(task, USER) for task in past.tasks]
    engine.dispose()
    ledger.close()


def live_page(engine: Any, spec: TaskFilter) -> tuple[list[str], int]:
    with engine.connect() as conn:
        documents, total, _ = list_tasks(conn, ViewTables.of_build(""), USER, spec)
    return [json.loads(document)["title"] for document in documents], total


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_a_past_page_is_the_live_page(
    both: tuple[Any, list[dict[str, Any]]], spec: TaskFilter
) -> None:
    engine, tasks = both
    page, total = page_of(tasks, spec)
    assert ([task["title"] for task in page], total) == live_page(engine, spec)


def test_due_dates_sort_with_the_undated_last_both_ways(
    both: tuple[Any, list[dict[str, Any]]],
) -> None:
    engine, _ = both
    undated = ["Bravo", "echo", "golf"]  # in creation order, either way
    ascending = ["alpha", "delta", "hotel", "charlie", "Foxtrot"]
    descending = ["charlie", "Foxtrot", "hotel", "alpha", "delta"]
    assert live_page(engine, TaskFilter(sort="due_at", order="asc"))[0] == ascending + undated
    assert live_page(engine, TaskFilter(sort="due_at", order="desc"))[0] == descending + undated


def test_priorities_sort_by_rank_urgent_first_on_desc(
    both: tuple[Any, list[dict[str, Any]]],
) -> None:
    engine, _ = both
    assert live_page(engine, TaskFilter(sort="priority"))[0] == [
        "charlie",
        "Foxtrot",
        "alpha",
        "delta",
        "golf",
        "hotel",
        "echo",
        "Bravo",
    ]
    assert live_page(engine, TaskFilter(sort="priority", order="asc"))[0][:2] == ["Bravo", "echo"]


def test_overdue_is_due_before_now_and_not_completed(
    both: tuple[Any, list[dict[str, Any]]],
) -> None:
    engine, _ = both
    assert live_page(engine, TaskFilter(overdue=True, now=NOW, sort="title", order="asc")) == (
        ["alpha"],
        1,
    )
    # Undated tasks are not overdue; neither is one due at this very moment.
    assert live_page(engine, TaskFilter(overdue=False, now=NOW))[1] == len(TASKS) - 1
    assert live_page(engine, TaskFilter(overdue=True, now=NOW + timedelta(seconds=1)))[1] == 2
