"""The aggregate cache bounded in bytes: its estimate of a task list against what
tracemalloc measures, its accounting, its eviction order, and its use by the library's
repository (on the in-memory event store: no database)."""

from __future__ import annotations

import copy
import gc
import subprocess
import sys
import threading
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pytest
from eventsourcing.domain import Snapshot

from write_side import TaskLedger, TaskList
from write_side.domain import (
    DESCRIPTION_MAX_LENGTH,
    MAX_TAGS,
    NO_PLAN,
    TAG_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    Plan,
)
from write_side.recurrence import RULE_MAX_LENGTH, parse_rule
from write_side.store.aggregate_cache import (
    AGGREGATE_OVERHEAD,
    MAX_EVENT_GROWTH,
    ByteBoundedCache,
    OtherWriters,
    estimate_bytes,
    growth,
)

_DUE = datetime(2026, 3, 2, 9, tzinfo=UTC)
# A rule near the longest allowed: each weekday at each position a month has, twice
# over (dateutil takes a day given twice as once).
_POSITIONS = [
    f"{n}{day}" for n in (1, 2, 3, 4, -1, -2, -3, -4) for day in ("MO", "TU", "WE", "TH", "FR")
] * 2
_LONG_RULE = parse_rule(
    "FREQ=MONTHLY;INTERVAL=1;WKST=MO;TZID=America/Argentina/ComodRivadavia;BYDAY="
    + ",".join(_POSITIONS)
    + ";UNTIL=20991231T235959Z"
)
assert RULE_MAX_LENGTH - 100 < len(_LONG_RULE) <= RULE_MAX_LENGTH


def full_plan(first: str) -> Plan:
    """The largest plan: every tag of full length in characters from ``first`` on
    (four bytes each from U+10000), both moments, a long rule."""
    tags = tuple(chr(ord(first) + n) * TAG_MAX_LENGTH for n in range(MAX_TAGS))
    return Plan("urgent", tags, _DUE, _DUE - timedelta(hours=1), _LONG_RULE)


def task_list(
    user_id: str,
    count: int,
    title: str = "t",
    description: str | None = None,
    plan: Plan = NO_PLAN,
    *,
    continued: bool = False,
) -> TaskList:
    """A list of ``count`` tasks; ``continued``: each completed, so that its next
    occurrence is added too (for a recurring ``plan``)."""
    tasks = TaskList.start(user_id)
    for i in range(count):
        task = tasks.add(f"{title}{i}"[:TITLE_MAX_LENGTH], description, plan)
        if continued:
            tasks.complete(task.id)
    tasks.collect_events()
    return tasks


def loaded_through_a_snapshot(tasks: TaskList) -> Any:
    """``tasks`` as a cache miss loads it, with what tracemalloc sees it allocate."""
    mapper = TaskLedger(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}).mapper
    stored = mapper.to_stored_event(TaskList.Snapshot.take(tasks))
    # Once untraced: the first load fills the library's own caches (topics, …).
    cast(Snapshot, mapper.to_domain_event(stored)).mutate(None)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    snapshot = cast(Snapshot, mapper.to_domain_event(stored))
    loaded = snapshot.mutate(None)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return loaded, sum(stat.size_diff for stat in after.compare_to(before, "filename"))


# Count, title, description, plan, each completed (adding its next occurrence).
ESTIMATED_LISTS: list[tuple[int, str, str | None, Plan, bool]] = [
    (1, "t", None, NO_PLAN, False),
    (700, "short ", None, NO_PLAN, False),
    (1500, "a" * 200, "d" * DESCRIPTION_MAX_LENGTH, NO_PLAN, False),
    (300, "é" * 200, "日" * DESCRIPTION_MAX_LENGTH, NO_PLAN, False),
    (300, "\U0001f600" * 200, "\U0001f600" * DESCRIPTION_MAX_LENGTH, NO_PLAN, False),
    # Plans: the largest, in narrow and in the widest characters; and a series.
    (1, "t", None, full_plan("a"), False),
    (400, "a" * 200, "d" * DESCRIPTION_MAX_LENGTH, full_plan("a"), False),
    (
        300,
        "\U0001f600" * 200,
        "\U0001f600" * DESCRIPTION_MAX_LENGTH,
        full_plan("\U0001f600"),
        False,
    ),
    (500, "short ", None, Plan("low", ("work",), _DUE, None, "DAILY"), True),
    (250, "\U0001f600" * 200, None, full_plan("\U0001f600"), True),
]


def measure_estimated_lists() -> None:
    """Print, for each of ESTIMATED_LISTS, what its load allocates and the estimate."""
    for count, title, description, plan, continued in ESTIMATED_LISTS:
        tasks = task_list("u", count, title, description, plan, continued=continued)
        loaded, measured = loaded_through_a_snapshot(tasks)
        print(count, measured, estimate_bytes(loaded))


def test_the_estimate_covers_what_a_list_takes_and_not_much_more() -> None:
    # In a fresh interpreter: tracemalloc counts every thread's allocations, and threads
    # other tests leave behind (projectors, listeners) would be counted as the list's.
    measured_by = "from tests.unit.test_aggregate_cache import measure_estimated_lists as m; m()"
    output = subprocess.run(
        [sys.executable, "-c", measured_by],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = output.split("\n")[: len(ESTIMATED_LISTS)]
    for (count, *_), line in zip(ESTIMATED_LISTS, lines, strict=True):
        listed, measured, estimate = (int(part) for part in line.split())
        assert listed == count
        assert measured <= estimate <= measured * 1.25 + AGGREGATE_OVERHEAD, line


def test_one_event_grows_a_list_by_at_most_the_allowance() -> None:
    tasks = task_list("u", 10)
    before = estimate_bytes(tasks)
    tasks.add("\U0001f600" * TITLE_MAX_LENGTH, "\U0001f600" * DESCRIPTION_MAX_LENGTH)
    assert 0 < estimate_bytes(tasks) - before <= MAX_EVENT_GROWTH


def test_a_task_of_the_largest_plan_and_its_next_occurrence_fit_the_allowance() -> None:
    tasks = task_list("u", 10)
    before = estimate_bytes(tasks)
    widest = ("\U0001f600" * TITLE_MAX_LENGTH, "\U0001f600" * DESCRIPTION_MAX_LENGTH)
    task = tasks.add(*widest, full_plan("\U0001f600"))
    added = estimate_bytes(tasks)
    assert 0 < added - before <= MAX_EVENT_GROWTH
    # Two events, TaskCompleted (no growth) and the next occurrence's TaskAdded.
    tasks.complete(task.id)
    events = [type(event).__name__ for event in tasks.collect_events()]
    assert events == ["TaskAdded", "TaskCompleted", "TaskAdded"]
    assert tasks.next_of(task.id) is not None
    assert 0 < estimate_bytes(tasks) - added <= MAX_EVENT_GROWTH


def ids(*names: str) -> list[UUID]:
    return [TaskList.create_id(name) for name in names]


def test_least_recently_used_lists_go_first_once_the_bytes_are_spent() -> None:
    a, b, c = (task_list(name, 20) for name in "abc")
    size = estimate_bytes(a)
    cache = ByteBoundedCache(max_bytes=2 * size + size // 2)
    cache.put(a.id, a)
    cache.put(b.id, b)
    assert cache.bytes == estimate_bytes(a) + estimate_bytes(b)
    assert cache.get(a.id) is a  # a is now the most recently used
    cache.put(c.id, c)
    assert cache.ids() == ids("a", "c")
    assert cache.bytes == estimate_bytes(a) + estimate_bytes(c)
    assert cache.evictions == 1
    with pytest.raises(KeyError):
        cache.get(b.id)


def test_the_count_bound_holds_too() -> None:
    cache = ByteBoundedCache(max_bytes=2**30, max_count=2)
    for name in "abc":
        tasks = task_list(name, 1)
        cache.put(tasks.id, tasks)
    assert cache.ids() == ids("b", "c")


def test_a_list_bigger_than_the_bound_is_not_kept() -> None:
    small, big = task_list("small", 1), task_list("big", 200)
    cache = ByteBoundedCache(max_bytes=estimate_bytes(big) - 1)
    cache.put(small.id, small)
    cache.put(big.id, big)
    assert cache.ids() == ids("small")
    assert cache.bytes == estimate_bytes(small)
    assert cache  # an empty or small cache is still a cache to the repository


def test_replacing_and_evicting_keep_the_count_of_bytes() -> None:
    a = task_list("a", 5)
    cache = ByteBoundedCache(max_bytes=2**30)
    cache.put(a.id, a)
    bigger = task_list("a", 50)
    cache.put(a.id, bigger)
    assert cache.bytes == estimate_bytes(bigger)
    assert cache.get(a.id, evict=True) is bigger
    assert cache.bytes == 0
    assert cache.ids() == []


def test_growth_in_place_is_counted_until_measured_again() -> None:
    """The repository fast-forwards a cached list in place: the cache counts the
    allowance for the new events, and measures again once it passes an eighth."""
    tasks = task_list("a", 200)
    cache = ByteBoundedCache(max_bytes=2**30)
    cache.put(tasks.id, tasks)
    measured = estimate_bytes(tasks)
    tasks.add("one more", None)
    tasks.collect_events()
    cache.fast_forwarded(tasks.id, tasks)
    assert cache.bytes == measured + MAX_EVENT_GROWTH  # an upper bound, not measured
    for i in range(40):
        tasks.add(f"more {i}", None)
    tasks.collect_events()
    cache.fast_forwarded(tasks.id, tasks)
    assert cache.bytes == estimate_bytes(tasks)  # the allowance passed an eighth


def test_a_saved_copy_takes_the_cached_lists_place_counted_by_its_events() -> None:
    """What a save of this process leaves is cached in place of the list it was
    copied from, its growth counted by its events until measured again; a copy of an
    older version than the cached list does not replace it."""
    tasks = task_list("a", 200)
    cache = ByteBoundedCache(max_bytes=2**30)
    cache.put(tasks.id, tasks)
    measured = estimate_bytes(tasks)
    saved = copy.deepcopy(tasks)
    saved.add("one more", None)
    events = saved.collect_events()
    cache.adopt(saved.id, saved, tasks.version, sum(map(growth, events)))
    assert cache.get(tasks.id) is saved
    assert cache.bytes == measured + sum(map(growth, events)) < measured + MAX_EVENT_GROWTH
    late = copy.deepcopy(tasks)  # a copy of the version before: another thread's
    late.add("late", None)
    cache.adopt(late.id, late, tasks.version, sum(map(growth, late.collect_events())))
    assert cache.get(tasks.id) is saved
    for i in range(40):
        saved = copy.deepcopy(saved)
        saved.add(f"more {i}", None)
        base = saved.version - 1
        cache.adopt(saved.id, saved, base, sum(map(growth, saved.collect_events())))
    assert cache.bytes == estimate_bytes(saved)  # the allowance passed an eighth


def test_a_saved_list_not_cached_stays_out() -> None:
    """Not cached: new, evicted, or too big to keep (measuring it on every command
    would cost a list over the bound a measurement each time)."""
    tasks = task_list("a", 20)
    cache = ByteBoundedCache(max_bytes=2**30)
    cache.adopt(tasks.id, tasks, 0, 0)
    assert cache.ids() == []
    assert cache.bytes == 0


def test_a_saved_list_that_outgrows_the_bound_leaves_the_cache() -> None:
    tasks = task_list("a", 200)
    cache = ByteBoundedCache(max_bytes=estimate_bytes(tasks) + 10)
    cache.put(tasks.id, tasks)
    saved = copy.deepcopy(tasks)
    saved.add("one more", None)
    cache.adopt(saved.id, saved, tasks.version, sum(map(growth, saved.collect_events())))
    assert cache.ids() == []
    assert cache.bytes == 0


def test_another_writer_is_assumed_for_a_minute_after_the_last_sign() -> None:
    now = [0.0]
    others = OtherWriters(clock=lambda: now[0])
    assert not others.lately
    others.seen()
    now[0] = OtherWriters.SECONDS - 1
    assert others.lately
    others.seen()
    now[0] = 2 * OtherWriters.SECONDS - 2
    assert others.lately
    now[0] = 2 * OtherWriters.SECONDS
    assert not others.lately


def test_growth_in_place_evicts_others() -> None:
    a, b = task_list("a", 50), task_list("b", 50)
    cache = ByteBoundedCache(max_bytes=estimate_bytes(a) * 2 + 100)
    cache.put(a.id, a)
    cache.put(b.id, b)
    for i in range(50):
        b.add(f"more {i}", None)
    b.collect_events()
    cache.fast_forwarded(b.id, b)
    assert cache.ids() == ids("b")
    assert cache.bytes == estimate_bytes(b)


def test_threads_sharing_the_cache_keep_its_accounting() -> None:
    lists = [task_list(f"user{n}", n % 7) for n in range(40)]
    cache = ByteBoundedCache(max_bytes=sum(map(estimate_bytes, lists)) // 3)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for round_ in range(200):
                tasks = lists[(offset + round_) % len(lists)]
                try:
                    cache.get(tasks.id, evict=round_ % 11 == 0)
                except KeyError:
                    cache.put(tasks.id, tasks)
                cache.fast_forwarded(tasks.id, tasks)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n * 5,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    cached = {tasks.id: tasks for tasks in lists}
    assert cache.bytes == sum(estimate_bytes(cached[key]) for key in cache.ids())
    assert cache.bytes <= cache.max_bytes


def test_the_repository_uses_the_cache_and_counts_the_fast_forward() -> None:
    """On the in-memory store, two ledgers share nothing: one ledger's cache, loaded,
    then brought up to date with its own writes."""
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.popo",
        "AGGREGATE_CACHE_MAXSIZE": "10",
        "AGGREGATE_CACHE_BYTES": str(2**20),
    }
    ledger = TaskLedger(env=env)
    cache = ledger.repository.cache
    assert isinstance(cache, ByteBoundedCache)
    assert cache.max_bytes == 2**20
    assert cache.max_count == 10
    for i in range(30):
        ledger.add_task("alice", f"task {i}", "x" * 500)
    tasks = ledger.task_list("alice")
    assert tasks is not None
    assert len(tasks.tasks()) == 30
    assert cache.ids() == ids("alice")
    assert estimate_bytes(tasks) <= cache.bytes <= estimate_bytes(tasks) * 9 // 8 + MAX_EVENT_GROWTH


def test_either_bound_at_zero_turns_the_cache_off() -> None:
    for maxsize, max_bytes in [("0", "1000"), ("10", "0")]:
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.popo",
            "AGGREGATE_CACHE_MAXSIZE": maxsize,
            "AGGREGATE_CACHE_BYTES": max_bytes,
        }
        assert TaskLedger(env=env).repository.cache is None
