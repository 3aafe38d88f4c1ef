"""Unit tier: the aggregate's decisions, its events and replay. No database."""

from __future__ import annotations

import copy
from uuid import uuid4

import pytest

from write_side.domain import (
    DESCRIPTION_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    TaskList,
    TaskNotFound,
)
from write_side.errors import InvalidTask


def replay(tasks: TaskList) -> TaskList:
    """A fresh aggregate from the events the given one has recorded."""
    events = tasks.collect_events()
    copy_: TaskList | None = None
    for event in events:
        copy_ = event.mutate(copy_)
    assert copy_ is not None
    return copy_


def test_stream_id_is_derived_from_the_user() -> None:
    assert TaskList.create_id("alice") == TaskList.create_id("alice")
    assert TaskList.create_id("alice") != TaskList.create_id("bob")
    assert TaskList.start("alice").id == TaskList.create_id("alice")


def test_add_trims_title_and_starts_pending() -> None:
    tasks = TaskList.start("alice")
    task = tasks.add("  write tests  ", "soon")
    assert (task.title, task.description, task.completed, task.version) == (
        "write tests",
        "soon",
        False,
        1,
    )
    assert task.created_at == task.updated_at


@pytest.mark.parametrize(
    "title",
    ["", "   ", "x" * (TITLE_MAX_LENGTH + 1), "nul\x00inside"],
)
def test_add_refuses_bad_titles(title: str) -> None:
    tasks = TaskList.start("alice")
    with pytest.raises(InvalidTask):
        tasks.add(title)
    assert len(tasks.collect_events()) == 1  # only Started


def test_description_limit() -> None:
    tasks = TaskList.start("alice")
    tasks.add("ok", "d" * DESCRIPTION_MAX_LENGTH)
    with pytest.raises(InvalidTask):
        tasks.add("too long", "d" * (DESCRIPTION_MAX_LENGTH + 1))
    with pytest.raises(InvalidTask):
        tasks.add("nul", "d\x00")


def test_edit_complete_reopen_toggle_bump_version_and_time() -> None:
    tasks = TaskList.start("alice")
    task = tasks.add("a")
    edited = tasks.edit(task.id, "b", "desc")
    assert (edited.title, edited.description, edited.version) == ("b", "desc", 2)
    assert tasks.complete(task.id).completed is True
    assert tasks.reopen(task.id).completed is False
    toggled = tasks.toggle(task.id)
    assert toggled.completed is True
    assert toggled.version == 5
    assert toggled.updated_at >= toggled.created_at


def test_changes_that_change_nothing_record_nothing() -> None:
    tasks = TaskList.start("alice")
    task = tasks.add("a", None)
    tasks.collect_events()
    tasks.edit(task.id, " a ", None)
    tasks.reopen(task.id)
    tasks.set_completed(task.id, False)
    assert tasks.collect_events() == []
    assert tasks.task(task.id).version == 1


def test_delete_forgets_the_task() -> None:
    tasks = TaskList.start("alice")
    task = tasks.add("a")
    tasks.delete(task.id)
    with pytest.raises(TaskNotFound):
        tasks.task(task.id)
    with pytest.raises(TaskNotFound):
        tasks.delete(task.id)


@pytest.mark.parametrize("command", ["complete", "reopen", "toggle", "delete"])
def test_unknown_task_is_not_found(command: str) -> None:
    tasks = TaskList.start("alice")
    with pytest.raises(TaskNotFound):
        getattr(tasks, command)(uuid4())


def test_replay_rebuilds_the_same_state() -> None:
    tasks = TaskList.start("alice")
    kept = tasks.add("kept", "d")
    gone = tasks.add("gone")
    tasks.edit(kept.id, "kept!", None)
    tasks.toggle(kept.id)
    tasks.delete(gone.id)
    expected = tasks.task(kept.id)
    rebuilt = replay(tasks)
    assert rebuilt.task(kept.id) == expected
    assert len(rebuilt.tasks()) == 1
    assert rebuilt.user_id == "alice"
    assert rebuilt.version == tasks.version


def test_events_carry_what_replay_needs_and_nothing_derived() -> None:
    tasks = TaskList.start("alice")
    task = tasks.add("a", "b")
    tasks.complete(task.id)
    started, added, completed = tasks.collect_events()
    assert isinstance(started, TaskList.Started)
    assert started.user_id == "alice"
    assert isinstance(added, TaskList.TaskAdded)
    assert (added.task_id, added.title, added.description) == (task.id, "a", "b")
    assert isinstance(completed, TaskList.TaskCompleted)
    assert not hasattr(completed, "version")


def test_deepcopy_is_independent() -> None:
    tasks = TaskList.start("alice")
    task = tasks.add("a")
    tasks.collect_events()
    clone = copy.deepcopy(tasks)
    clone.complete(task.id)
    clone.add("b")
    assert tasks.task(task.id).completed is False
    assert len(tasks.tasks()) == 1
    assert tasks.pending_events == []


def test_text_stored_before_normalisation_is_kept_and_not_rechecked() -> None:
    """Tasks recorded before titles were normalised to NFC: an edit of another field
    leaves them as they are, and sending them back in NFC is no change."""
    tasks = TaskList.start("alice")
    task_id = uuid4()
    # U+FB2C is three characters in NFC: this description would be 3,000 of them.
    old_description = "\ufb2c" * 1000
    tasks.trigger_event(
        TaskList.TaskAdded, task_id=task_id, title="cafe\u0301", description=old_description
    )
    tasks.collect_events()
    renamed = tasks.update(task_id, completed=True)
    assert renamed.description == old_description
    tasks.collect_events()
    same = tasks.edit(task_id, title="caf\u00e9")
    assert tasks.pending_events == []
    assert same.title == "cafe\u0301"
    assert tasks.update(task_id, title="renamed").description == old_description
