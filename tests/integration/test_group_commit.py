"""Group commit on real event stores: concurrent saves share transactions, each caller
gets its own positions, and a conflict fails its whole group and nothing of it lands."""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError, OperationalError

from tests import support
from write_side import TaskLedger, TaskList
from write_side.store.group_commit import CommitInterrupted, CommitTimeout, GroupCommit

# Threads started 5 ms apart: the first one is committing when the others arrive.
in_threads = partial(support.in_threads, stagger=0.005)


def slow_save(ledger: TaskLedger, calls: list[int]) -> Any:
    """The ledger's own save, held up a little so that other callers queue behind it."""

    def save(*events: Any) -> Any:
        calls.append(len(events))
        time.sleep(0.05)
        return ledger.save(*events)

    return save


def started(ledger: TaskLedger, user: str) -> TaskList:
    tasks = ledger.task_list(user) or TaskList.start(user)
    tasks.add(f"{user}'s task", None)
    return tasks


def test_saves_arriving_during_a_commit_share_the_next_one(ledger: TaskLedger) -> None:
    calls: list[int] = []
    group = GroupCommit(slow_save(ledger, calls))
    results = in_threads(6, lambda i: group.save(started(ledger, f"user{i}")))

    # Events saved per transaction: each new user's Started and TaskAdded.
    assert calls[0] == 2 and sum(calls) == 12 and len(calls) < 6
    assert (group.groups, group.saves) == (len(calls), 6)
    # Each caller got the recordings of its own events, as stored in the log.
    for i, recordings in enumerate(results):
        stored = ledger.recorder.select_events(TaskList.create_id(f"user{i}"))
        assert [r.notification.id for r in recordings] == [
            n.id
            for n in ledger.recorder.select_notifications(start=1, limit=100)
            if n.originator_id == TaskList.create_id(f"user{i}")
        ]
        assert [r.domain_event.originator_version for r in recordings] == [
            s.originator_version for s in stored
        ]


def test_a_conflict_in_a_group_fails_only_its_own_save(ledger: TaskLedger) -> None:
    ledger.add_task("alice", "first", None)
    stale = ledger.task_list("alice")
    assert stale is not None
    ledger.add_task("alice", "saved meanwhile", None)  # another writer gets in first
    stale.add("conflicting", None)
    before = ledger.last_position()

    calls: list[int] = []
    group = GroupCommit(slow_save(ledger, calls))
    first = threading.Thread(target=group.save, args=(started(ledger, "carol"),))
    first.start()
    time.sleep(0.01)
    results = in_threads(3, lambda i: group.save(stale if i == 0 else started(ledger, f"bob{i}")))
    first.join()

    # carol alone; then the three together, which conflicts; then each alone.
    assert calls == [2, 5, 1, 2, 2]
    assert isinstance(results[0], IntegrityError)
    assert [type(result) for result in results[1:]] == [list, list]
    # carol's, bob1's and bob2's Started and TaskAdded (PostgreSQL's ids have gaps
    # where the failed insert took some).
    saved = ledger.recorder.select_notifications(start=before + 1, limit=100)
    assert len(saved) == 6
    bobs = [ledger.task_list(f"bob{i}") for i in (1, 2)]
    assert [len(tasks.tasks()) for tasks in bobs if tasks is not None] == [1, 1]
    assert (group.groups, group.saves) == (3, 3)


def test_an_interrupted_commit_leaves_no_caller_waiting(ledger: TaskLedger) -> None:
    calls: list[int] = []
    group: GroupCommit

    def interrupted(*events: Any) -> Any:
        calls.append(len(events))
        if len(calls) == 1:
            # The first commit lasts until the other three callers are queued behind it,
            # however slowly a loaded machine starts their threads.
            queued(group, 3)
        if len(calls) == 2:
            raise KeyboardInterrupt  # in the thread that leads the second group
        return ledger.save(*events)

    group = GroupCommit(interrupted)
    results = in_threads(4, lambda i: group.save(started(ledger, f"user{i}")))

    assert calls == [2, 6]  # the first caller's Started and TaskAdded; then the three's
    assert isinstance(results[0], list)
    # The leader of the second group gets its interrupt; the others in the group learn
    # that the outcome of their save is unknown (503 for a client), never wait forever.
    interrupts = [r for r in results[1:] if isinstance(r, KeyboardInterrupt)]
    unknown = [r for r in results[1:] if isinstance(r, CommitInterrupted)]
    assert (len(interrupts), len(unknown)) == (1, 2)
    assert all(isinstance(r, OperationalError) for r in unknown)


def queued(group: GroupCommit, count: int, limit: float = 10.0) -> None:
    """Wait until ``count`` saves wait behind the commit under way in ``group``."""
    deadline = time.monotonic() + limit
    while len(group._waiting) < count:
        assert time.monotonic() < deadline, f"{count} saves never queued"
        time.sleep(0.002)


def test_concurrent_commands_share_transactions(ledger: TaskLedger) -> None:
    def commands(i: int) -> list[int]:
        return [ledger.add_task(f"user{i}", f"t{n}", None).position for n in range(20)]

    positions = in_threads(8, commands)

    group = ledger._saver._group_commit
    assert group.saves == 8 * 20
    assert group.groups < group.saves
    # Every command's position is its own TaskAdded, whichever thread committed it.
    log = {n.id: n for n in ledger.recorder.select_notifications(start=1, limit=1000)}
    for i, answered in enumerate(positions):
        assert all(log[p].originator_id == TaskList.create_id(f"user{i}") for p in answered)
        assert all(log[p].topic.endswith("TaskAdded") for p in answered)


def test_a_stuck_commit_holds_the_others_up_only_so_long(ledger: TaskLedger) -> None:
    stuck = threading.Event()

    def save(*events: Any) -> Any:
        stuck.wait(5)  # a connection that hangs
        return ledger.save(*events)

    group = GroupCommit(save, wait_limit=0.2)
    first = threading.Thread(target=group.save, args=(started(ledger, "carol"),))
    first.start()
    time.sleep(0.05)
    with pytest.raises(CommitTimeout):
        group.save(started(ledger, "bob"))
    stuck.set()
    first.join()
    assert ledger.task_list("carol") is not None
    assert ledger.task_list("bob") is None  # withdrawn, never saved
    assert group.saves == 1
