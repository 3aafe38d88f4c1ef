"""LayeredDict (write_side/layered.py): a dict's behaviour, copies that share only what
neither changed, and the task list's copy built on it (issue 14, big users)."""

from __future__ import annotations

import contextlib
import copy
import json
import random
from typing import Any

from write_side import TaskLedger, TaskList
from write_side.layered import LayeredDict


def test_it_behaves_as_a_dict_through_random_changes_and_merges() -> None:
    draw = random.Random(14)
    plain: dict[int, int] = {}
    layered: LayeredDict[int, int] = LayeredDict()
    for step in range(5000):
        key = draw.randrange(300)
        if draw.random() < 0.3 and key in plain:
            del plain[key]
            del layered[key]
        else:
            plain[key] = step
            layered[key] = step
        assert len(layered) == len(plain)
        assert (key in layered) == (key in plain)
        assert layered.get(key) == plain.get(key)
    assert list(layered.items()) == list(plain.items())  # the order too
    assert layered == plain


def test_an_entry_set_again_after_its_deletion_comes_last_as_in_a_dict() -> None:
    layered = LayeredDict({"a": 1, "b": 2, "c": 3})
    del layered["a"]
    layered["a"] = 4
    assert list(layered) == ["b", "c", "a"]


def test_a_copy_and_its_source_change_apart_and_share_their_base() -> None:
    source = LayeredDict({n: n for n in range(10_000)})
    source[1] = -1
    clone = source.copy()
    clone[2] = -2
    del clone[3]
    source[4] = -4
    assert (source[2], 3 in source, clone[4]) == (2, True, 4)
    assert (clone[1], clone[2], 3 in clone) == (-1, -2, False)
    assert clone._base is source._base
    # Merging one never changes the other's view.
    for n in range(5000):
        source[n] = n * 10
    assert clone[2] == -2 and clone[5] == 5 and len(clone) == 9_999


def test_a_task_list_copy_is_independent_of_its_source() -> None:
    tasks = TaskList.start("u")
    first = tasks.add("first", None)
    tasks.collect_events()
    clone = copy.deepcopy(tasks)
    clone.add("second", None)
    clone.complete(first.id)
    assert [t.title for t in tasks.tasks()] == ["first"]
    assert not tasks.task(first.id).completed
    assert tasks.pending_events == []


def test_a_failed_command_or_save_leaves_the_cached_list_as_it_was() -> None:
    env = {"PERSISTENCE_MODULE": "eventsourcing.popo", "AGGREGATE_CACHE_MAXSIZE": "10"}
    ledger = TaskLedger(env=env)
    for n in range(50):
        ledger.add_task("alice", f"task {n}", None)
    stream_id = TaskList.create_id("alice")
    ledger.task_list("alice")  # the cached list brought up to date with the store
    cached: Any = ledger.repository.cache.get(stream_id)  # type: ignore[union-attr]
    before = (cached.version, cached.tasks())

    def failing_save(*_: object) -> None:
        raise RuntimeError("the store is down")

    ledger._saver._group_commit._save = failing_save  # type: ignore[assignment]
    with contextlib.suppress(RuntimeError):
        ledger.add_task("alice", "never saved", None)
    assert (cached.version, cached.tasks()) == before
    loaded = ledger.task_list("alice")
    assert loaded is not None and len(loaded.tasks()) == 50


def test_a_snapshot_of_layered_tasks_is_stored_as_a_dict_of_them() -> None:
    mapper = TaskLedger(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}).mapper
    tasks = TaskList.start("u")
    for n in range(5):
        tasks.add(f"t{n}", None)
    tasks.collect_events()
    tasks = copy.deepcopy(tasks)  # LayeredDicts, with changes on a shared base
    stored = mapper.to_stored_event(TaskList.Snapshot.take(tasks))
    state = json.loads(stored.state)["state"]
    assert type(state["_tasks"]) is dict and len(state["_tasks"]) == 5
    restored = mapper.to_domain_event(stored).mutate(None)  # type: ignore[attr-defined]
    assert restored.tasks() == tasks.tasks()


def test_the_cache_counts_each_fast_forwarded_event_by_what_it_adds() -> None:
    """Counted at the most any event adds (10 KB), a list of 50,000 tasks was measured
    again, 50 ms of GIL here, every few hundred commands."""
    from write_side.store.aggregate_cache import MAX_EVENT_GROWTH, estimate_bytes  # noqa: PLC0415

    env = {"PERSISTENCE_MODULE": "eventsourcing.popo", "AGGREGATE_CACHE_MAXSIZE": "10"}
    ledger = TaskLedger(env=env)
    ledger.add_task("bob", "first", None)
    ledger.task_list("bob")
    cache = ledger.repository.cache
    counted = cache.bytes  # type: ignore[union-attr]
    ledger.add_task("bob", "second", None)
    tasks = ledger.task_list("bob")
    assert tasks is not None
    grown = cache.bytes - counted  # type: ignore[union-attr]
    assert grown < MAX_EVENT_GROWTH // 10
    assert cache.bytes >= estimate_bytes(tasks)  # type: ignore[union-attr]
