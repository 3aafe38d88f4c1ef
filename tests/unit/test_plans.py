"""Unit tier: a task's plan (priority, tags, due and reminder moments, recurrence) and
recurring tasks, as the aggregate decides them; and the next occurrence as a command
answers it (on a SQLite event store in the test's directory)."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from tests.support import make_settings, open_ledger
from write_side import (
    MAX_TAGS,
    TAG_MAX_LENGTH,
    InvalidTask,
    Plan,
    RequestKey,
    Task,
    TaskLedger,
    TaskList,
)

MONDAY = datetime(2026, 3, 2, 9, tzinfo=UTC)
WEDNESDAY = MONDAY + timedelta(days=2)
WEEKLY = "FREQ=WEEKLY;BYDAY=MO,WE"
FULL_PLAN = Plan(
    priority="high",
    tags=("work", "home"),
    due_at=MONDAY,
    remind_at=MONDAY - timedelta(minutes=30),
    recurrence=WEEKLY,
)


def fresh(*plans: Plan) -> tuple[TaskList, list[Task]]:
    """A list holding one task per plan, its events collected (as if saved)."""
    tasks = TaskList.start("alice")
    added = [tasks.add(f"task {n}", "notes", plan) for n, plan in enumerate(plans)]
    tasks.collect_events()
    return tasks, added


def names(tasks: TaskList) -> list[str]:
    return [type(event).__name__ for event in tasks.collect_events()]


def replayed(events: Sequence[Any]) -> TaskList:
    state: TaskList | None = None
    for event in events:
        state = event.mutate(state)
    assert state is not None
    return state


# Adding with a plan ----------------------------------------------------------


def test_a_task_is_added_with_the_plans_defaults() -> None:
    _, [task] = fresh(Plan())
    assert (task.priority, task.tags, task.due_at, task.remind_at) == ("none", (), None, None)
    assert (task.recurrence, task.recurs_from) == (None, None)


def test_a_task_is_added_with_its_plan_checked() -> None:
    paris = timezone(timedelta(hours=1))
    plan = Plan(
        priority="urgent",
        tags=("  Work ", "cafe\u0301", "WORK", "Café", "home"),
        due_at=datetime(2026, 3, 2, 10, tzinfo=paris),
        remind_at=datetime(2026, 3, 2, 9, 30, tzinfo=paris),
        recurrence="WEEKLY:MON,WED",
    )
    tasks = TaskList.start("alice")
    task = tasks.add("planned", None, plan)
    # Trimmed, composed (NFC), the case-duplicates dropped and the first spelling kept.
    assert task.tags == ("Work", "café", "home")
    assert task.due_at == MONDAY
    assert task.due_at.tzinfo is UTC
    assert task.remind_at == MONDAY - timedelta(minutes=30)
    assert task.recurrence == WEEKLY
    events = tasks.collect_events()
    added = events[-1]
    assert isinstance(added, TaskList.TaskAdded)
    assert (added.priority, added.tags, added.recurrence) == ("urgent", list(task.tags), WEEKLY)
    assert replayed(events).tasks() == [task]


def test_a_reminder_without_a_due_date_is_allowed() -> None:
    _, [task] = fresh(Plan(remind_at=MONDAY))
    assert (task.due_at, task.remind_at) == (None, MONDAY)


@pytest.mark.parametrize(
    ("plan", "field"),
    [
        (Plan(tags=tuple(f"t{n}" for n in range(MAX_TAGS + 1))), "tags"),
        (Plan(tags=("x" * (TAG_MAX_LENGTH + 1),)), "tags"),
        (Plan(tags=("ok", "   ")), "tags"),
        (Plan(tags=("",)), "tags"),
        (Plan(tags=("nul\x00",)), "tags"),
        (Plan(priority="critical"), "priority"),  # type: ignore[arg-type]
        (Plan(due_at=datetime(2026, 3, 2, 9)), "due_at"),
        (Plan(remind_at=datetime(2026, 3, 2, 9)), "remind_at"),
        (Plan(recurrence="FREQ=HOURLY", due_at=MONDAY), "recurrence"),
        # A series steps from its due date: none without one.
        (Plan(recurrence="DAILY"), "recurrence"),
    ],
)
def test_a_plan_that_breaks_a_rule_adds_nothing(plan: Plan, field: str) -> None:
    tasks = TaskList.start("alice")
    with pytest.raises(InvalidTask) as refused:
        tasks.add("planned", None, plan)
    assert refused.value.field == field
    assert names(tasks) == ["Started"]


def test_tags_at_their_limits_are_kept() -> None:
    tags = tuple(f"{n:02d}" + "x" * (TAG_MAX_LENGTH - 2) for n in range(MAX_TAGS))
    _, [task] = fresh(Plan(tags=tags))
    assert task.tags == tags
    # The limit is on the labels sent: twenty-one are refused even when two of them
    # are the same but for case (and twenty would be kept).
    with pytest.raises(InvalidTask):
        fresh(Plan(tags=(*tags, tags[0].upper())))


# Planning ------------------------------------------------------------------


def test_plan_changes_only_the_fields_sent_and_records_the_whole_plan() -> None:
    tasks, [task] = fresh(FULL_PLAN)
    planned = tasks.plan(task.id, priority="low", tags=["Errand"])
    assert Plan.of(planned) == Plan("low", ("Errand",), MONDAY, FULL_PLAN.remind_at, WEEKLY)
    assert (planned.title, planned.description) == (task.title, task.description)
    assert planned.version == task.version + 1
    assert planned.updated_at > task.updated_at
    [event] = tasks.collect_events()
    assert isinstance(event, TaskList.TaskPlanned)
    assert event.task_id == task.id
    assert (event.priority, event.tags, event.due_at) == ("low", ["Errand"], MONDAY)
    assert (event.remind_at, event.recurrence) == (FULL_PLAN.remind_at, WEEKLY)


def test_a_plan_that_changes_nothing_records_nothing() -> None:
    tasks, [task] = fresh(FULL_PLAN)
    same_moment = MONDAY.astimezone(timezone(timedelta(hours=-5)))
    unchanged = tasks.plan(task.id, priority="high", tags=[" work", "home "], due_at=same_moment)
    assert unchanged == task
    assert tasks.plan(task.id) == task
    assert names(tasks) == []


def test_plan_refuses_a_bad_field_and_records_nothing() -> None:
    tasks, [task] = fresh(Plan())
    with pytest.raises(InvalidTask) as refused:
        tasks.plan(task.id, tags=["ok"] * 3 + ["x" * (TAG_MAX_LENGTH + 1)])
    assert refused.value.field == "tags"
    with pytest.raises(InvalidTask) as refused:
        tasks.plan(task.id, recurrence="DAILY")
    assert refused.value.field == "recurrence"
    assert names(tasks) == []
    assert tasks.task(task.id) == task


def test_a_recurring_task_keeps_its_due_date() -> None:
    tasks, [task] = fresh(FULL_PLAN)
    with pytest.raises(InvalidTask) as refused:
        tasks.plan(task.id, due_at=None)
    assert refused.value.field == "recurrence"
    # Clearing both at once is a plain change.
    cleared = tasks.plan(task.id, due_at=None, recurrence=None)
    assert (cleared.due_at, cleared.recurrence) == (None, None)
    assert names(tasks) == ["TaskPlanned"]


def test_a_stored_field_is_not_checked_again_when_another_is_planned() -> None:
    """A field stored under older rules (here a tag longer than today's limit) stays
    as stored when another field is planned: only the fields sent are checked."""
    tasks = TaskList.start("alice")
    tasks.trigger_event(
        TaskList.TaskAdded,
        task_id=UUID(int=1),
        title="old",
        description=None,
        tags=["x" * (TAG_MAX_LENGTH + 5)],
    )
    planned = tasks.plan(UUID(int=1), priority="medium")
    assert planned.tags == ("x" * (TAG_MAX_LENGTH + 5),)


# Recurring tasks -----------------------------------------------------------


def test_completing_a_recurring_task_adds_its_next_occurrence() -> None:
    tasks, [task] = fresh(FULL_PLAN)
    done = tasks.complete(task.id)
    assert done.completed
    assert names(tasks) == ["TaskCompleted", "TaskAdded"]
    [_, following] = tasks.tasks()
    assert tasks.next_of(task.id) == following.id
    assert (following.title, following.description) == (task.title, task.description)
    assert (following.priority, following.tags) == (task.priority, task.tags)
    assert following.recurrence == WEEKLY
    assert following.due_at == WEDNESDAY
    # The reminder keeps its distance from the due moment.
    assert following.remind_at == WEDNESDAY - timedelta(minutes=30)
    assert following.recurs_from == task.id
    assert not following.completed
    assert following.version == 1


def test_a_reminder_after_the_due_moment_shifts_the_same_way() -> None:
    tasks, [task] = fresh(
        Plan(due_at=MONDAY, remind_at=MONDAY + timedelta(hours=2), recurrence="DAILY")
    )
    tasks.complete(task.id)
    following = tasks.tasks()[-1]
    assert (following.due_at, following.remind_at) == (
        MONDAY + timedelta(days=1),
        MONDAY + timedelta(days=1, hours=2),
    )


def test_a_task_without_a_rule_adds_nothing_when_completed() -> None:
    tasks, [task] = fresh(Plan(due_at=MONDAY))
    tasks.complete(task.id)
    assert names(tasks) == ["TaskCompleted"]
    assert tasks.next_of(task.id) is None


def test_reopening_keeps_the_next_occurrence_and_completing_again_adds_none() -> None:
    tasks, [task] = fresh(FULL_PLAN)
    tasks.complete(task.id)
    following = tasks.tasks()[-1]
    tasks.collect_events()
    tasks.reopen(task.id)
    assert tasks.tasks() == [tasks.task(task.id), following]
    tasks.complete(task.id)
    tasks.toggle(task.id)
    tasks.toggle(task.id)
    assert names(tasks) == ["TaskReopened", "TaskCompleted", "TaskReopened", "TaskCompleted"]
    assert len(tasks.tasks()) == 2
    assert tasks.next_of(task.id) == following.id


def test_deleting_the_next_occurrence_does_not_bring_it_back() -> None:
    tasks, [task] = fresh(FULL_PLAN)
    tasks.complete(task.id)
    following = tasks.tasks()[-1]
    tasks.delete(following.id)
    tasks.reopen(task.id)
    tasks.complete(task.id)
    assert names(tasks)[-2:] == ["TaskReopened", "TaskCompleted"]
    assert [t.id for t in tasks.tasks()] == [task.id]
    # Nor is it named any more (X-Next-Task would point at a 404).
    assert tasks.next_of(task.id) is None


def test_the_series_goes_on_from_the_next_occurrence() -> None:
    tasks, [task] = fresh(FULL_PLAN)
    tasks.complete(task.id)
    second = tasks.tasks()[-1]
    tasks.complete(second.id)
    third = tasks.tasks()[-1]
    assert third.recurs_from == second.id
    assert third.due_at == MONDAY + timedelta(days=7)
    assert [tasks.next_of(task.id), tasks.next_of(second.id)] == [second.id, third.id]


def test_count_ends_the_series() -> None:
    tasks, [task] = fresh(Plan(due_at=MONDAY, recurrence="FREQ=DAILY;COUNT=2"))
    tasks.complete(task.id)
    last = tasks.tasks()[-1]
    assert last.recurrence == "FREQ=DAILY;COUNT=1"
    tasks.collect_events()
    tasks.complete(last.id)
    assert names(tasks) == ["TaskCompleted"]
    assert tasks.next_of(last.id) is None


def test_the_last_of_a_count_adds_none() -> None:
    tasks, [task] = fresh(Plan(due_at=MONDAY, recurrence="FREQ=DAILY;COUNT=1"))
    tasks.complete(task.id)
    assert names(tasks) == ["TaskCompleted"]
    assert len(tasks.tasks()) == 1


def test_until_ends_the_series() -> None:
    until = "FREQ=DAILY;UNTIL=20260302T090000Z"
    tasks, [task] = fresh(Plan(due_at=MONDAY, recurrence=until))
    tasks.complete(task.id)
    assert names(tasks) == ["TaskCompleted"]


def test_update_plans_first_and_then_completes() -> None:
    tasks, [task] = fresh(FULL_PLAN)
    tasks.update(
        task.id,
        title="renamed",
        completed=True,
        plan={"priority": "urgent", "tags": ["new"], "recurrence": "DAILY"},
    )
    assert names(tasks) == ["TaskEdited", "TaskPlanned", "TaskCompleted", "TaskAdded"]
    following = tasks.tasks()[-1]
    assert (following.title, following.priority, following.tags) == ("renamed", "urgent", ("new",))
    assert (following.recurrence, following.due_at) == ("FREQ=DAILY", MONDAY + timedelta(days=1))


def test_update_with_a_refused_plan_records_nothing() -> None:
    tasks, [task] = fresh(FULL_PLAN)
    with pytest.raises(InvalidTask):
        tasks.update(task.id, completed=True, plan={"due_at": None})
    assert names(tasks) == []
    assert not tasks.task(task.id).completed


def test_replay_rebuilds_plans_and_series() -> None:
    tasks = TaskList.start("alice")
    task = tasks.add("series", None, FULL_PLAN)
    tasks.plan(task.id, priority="medium")
    tasks.complete(task.id)
    following = tasks.tasks()[-1]
    tasks.delete(task.id)
    rebuilt = replayed(tasks.collect_events())
    assert rebuilt.tasks() == tasks.tasks() == [following]
    assert rebuilt._next_of == tasks._next_of == {}


def test_a_copy_of_the_list_keeps_its_own_series() -> None:
    tasks, [task, other] = fresh(FULL_PLAN, FULL_PLAN)
    tasks.complete(task.id)
    tasks.collect_events()
    clone = copy.deepcopy(tasks)
    clone.complete(other.id)
    assert clone.next_of(other.id) is not None
    assert tasks.next_of(other.id) is None
    assert clone.next_of(task.id) == tasks.next_of(task.id)
    assert len(tasks.tasks()) == 3


# The next occurrence in a command's answer ---------------------------------


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[TaskLedger]:
    app = open_ledger(make_settings(None, tmp_path))
    yield app
    app.close()


def recurring(ledger: TaskLedger, user_id: str = "alice") -> Task:
    task = ledger.add_task(user_id, "series", None, plan=FULL_PLAN).task
    assert task is not None
    return task


def test_a_completion_answers_the_next_occurrence(ledger: TaskLedger) -> None:
    task = recurring(ledger)
    change = ledger.set_task_completed("alice", task.id, True)
    assert change.task is not None and change.task.completed
    tasks = ledger.task_list("alice")
    assert tasks is not None
    following = tasks.tasks()[-1]
    assert change.next_task == following.id
    assert following.recurs_from == task.id
    # The completion and the next occurrence were saved together: one position.
    assert change.position == ledger.last_position()
    # Later answers on the task name it too; a task with no series answers none.
    assert ledger.toggle_task("alice", task.id).next_task == following.id
    assert ledger.add_task("alice", "plain", None).next_task is None


def test_a_repeated_keyed_completion_adds_one_next_occurrence(ledger: TaskLedger) -> None:
    task = recurring(ledger)
    request = RequestKey("complete-1", "fingerprint")
    first = ledger.update_task("alice", task.id, completed=True, request=request)
    again = ledger.update_task("alice", task.id, completed=True, request=request)
    assert again.replayed and not first.replayed
    assert first.next_task is not None
    assert again.next_task == first.next_task
    assert again.task == first.task
    tasks = ledger.task_list("alice")
    assert tasks is not None
    assert [t.id for t in tasks.tasks()] == [task.id, first.next_task]
    record = ledger.request_record("alice", "complete-1")
    assert record is not None
    assert record.next_task == first.next_task


def test_a_keyed_request_that_adds_no_occurrence_records_none(ledger: TaskLedger) -> None:
    task = recurring(ledger)
    change = ledger.update_task(
        "alice", task.id, plan={"priority": "low"}, request=RequestKey("plan-1", "fp")
    )
    assert change.next_task is None
    record = ledger.request_record("alice", "plan-1")
    assert record is not None
    assert record.next_task is None
    assert ledger.update_task(
        "alice", task.id, plan={"priority": "low"}, request=RequestKey("plan-1", "fp")
    ).replayed


def test_a_series_at_the_end_of_the_calendar_completes_without_a_next() -> None:
    last_day = datetime(9999, 12, 31, 12, tzinfo=UTC)
    tasks, [task] = fresh(Plan(due_at=last_day, recurrence="DAILY"))
    assert tasks.complete(task.id).completed
    assert names(tasks) == ["TaskCompleted"]


def test_a_reminder_the_calendar_cannot_shift_is_left_off_the_next_occurrence() -> None:
    far = datetime(9999, 12, 31, 12, tzinfo=UTC)
    tasks, [task] = fresh(Plan(due_at=MONDAY, remind_at=far, recurrence="DAILY"))
    tasks.complete(task.id)
    following = tasks.tasks()[-1]
    assert (following.due_at, following.remind_at) == (MONDAY + timedelta(days=1), None)
