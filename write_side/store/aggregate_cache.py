"""The aggregate cache, bounded in bytes: the least recently used aggregates go first
once the estimated size of all cached aggregates passes the bound.

The library's cache bounds only the count of aggregates (1,000 by default), and one
user's list may hold 50,000 tasks: 100 users of 500 full-size tasks grew a process by
337 MiB. This cache keeps the library's interface (``get``, ``put``) and replaces the
repository's, so the repository goes on fast-forwarding cached aggregates from the
store and handing out copies, and a command that lost a race still re-reads.

Sizes are estimates, measured rather than guessed (see ``TASK_OVERHEAD``), and kept
as an upper bound between measurements: a cached aggregate grows in place when the
repository fast-forwards it, by at most ``MAX_EVENT_GROWTH`` per event, so its size is
counted as its last measurement plus that much per event since, and measured again
(linear in its tasks) once that allowance passes an eighth of the measurement.

A command may also take a list from the cache without asking the store for newer
events (``MeasuredRepository.cached_copy``): the list a save of this process left
there (``adopt``) is current unless another process has written to the stream since.
The library's fast-forward asks the store on every command, a round trip under the
user's lock. What keeps an unasked copy exact is the command runner's
(write_side/commands.py): a save built on a stale copy conflicts, and a command that
would save nothing is decided again on the store's state. While another process writes
to the store (``OtherWriters``: a fast-forward finding events this process did not
save says so) every command fast-forwards, as before.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import filterfalse
from operator import attrgetter, countOf
from typing import Any
from uuid import UUID

from eventsourcing.application import Cache, Repository, project_aggregate

from write_side.domain import (
    DESCRIPTION_MAX_LENGTH,
    MAX_TAGS,
    TAG_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    Task,
    TaskList,
)
from write_side.idempotency import RequestRecord
from write_side.recurrence import RULE_MAX_LENGTH

DEFAULT_MAX_BYTES = 64 * 2**20

# Bytes a cached task holds beyond its title, description and plan: the Task, its
# UUID, two datetimes, the dict key (the id as text) and its share of the dict.
# Measured with tracemalloc on lists of 1 to 21,846 tasks loaded through a snapshot
# (as a cache miss loads them; replayed from events they share a datetime and take
# less): at most 413 bytes before plans, reached just before the dict doubles, and
# about 510 since the Task gained the plan's six slots (tests/unit/test_aggregate_cache).
TASK_OVERHEAD = 520
# An aggregate beside its tasks: its object and attributes, the ids and timestamps,
# the dict's own table (a request record: its key and fingerprint, ~1,000). Measured
# up to 2,300 bytes with a one-character user id, which may hold 127 more; the
# recurring tasks' next occurrences (an empty dict) add about 300.
AGGREGATE_OVERHEAD = 2880
# Each recurring task's next occurrence: a UUID, its key (the task id as text) and
# its share of the dict.
NEXT_OCCURRENCE_OVERHEAD = 240
# The most one event can add: a task of full-length texts in the widest characters
# (4 bytes each) and the largest plan, the next occurrence of a series (which its
# completion adds) at that. Editing, planning, completing, deleting, recording a
# request add no more.
_WIDEST = "\U0001f600"
# A plan's moments (due, reminder), each a datetime of its own.
_MOMENT = sys.getsizeof(datetime.now(UTC))
_WIDEST_TAGS = (_WIDEST * TAG_MAX_LENGTH,) * MAX_TAGS
MAX_EVENT_GROWTH = (
    TASK_OVERHEAD
    + sys.getsizeof(_WIDEST * TITLE_MAX_LENGTH)
    + sys.getsizeof(_WIDEST * DESCRIPTION_MAX_LENGTH)
    + sys.getsizeof(_WIDEST_TAGS)
    + MAX_TAGS * sys.getsizeof(_WIDEST_TAGS[0])
    + 2 * _MOMENT
    + sys.getsizeof("x" * RULE_MAX_LENGTH)
    + NEXT_OCCURRENCE_OVERHEAD
)

_titles = attrgetter("title")
_descriptions = attrgetter("description")
_tags = attrgetter("tags")
_rules = attrgetter("recurrence")
_due = attrgetter("due_at")
_reminder = attrgetter("remind_at")


def estimate_bytes(aggregate: Any) -> int:
    """The memory an aggregate holds, by the measurements above. Linear in the number
    of tasks, but in C loops (about 10 ms for 50,000 tasks here, every few hundred of
    that list's commands: see ``ByteBoundedCache.fast_forwarded``)."""
    if isinstance(aggregate, TaskList):
        tasks = aggregate.tasks()
        series = len(aggregate._next_of) * NEXT_OCCURRENCE_OVERHEAD
        return AGGREGATE_OVERHEAD + len(tasks) * TASK_OVERHEAD + _text_bytes(tasks) + series
    if isinstance(aggregate, RequestRecord) and aggregate.task is not None:
        return AGGREGATE_OVERHEAD + TASK_OVERHEAD + _text_bytes([aggregate.task])
    return AGGREGATE_OVERHEAD


def _text_bytes(tasks: list[Task]) -> int:
    titles = _str_bytes(list(map(_titles, tasks)))
    # None (no description) and "" are shared objects: nothing of the task's own.
    texts = titles + _str_bytes(list(filter(None, map(_descriptions, tasks))))
    # A task without a plan shares the empty tuple and None: nothing of its own.
    return texts + _plan_bytes(tasks)


# What sys.getsizeof says of an ASCII str beyond its characters (CPython's compact
# ASCII form: one byte a character, and the terminating NUL).
_ASCII_STR = sys.getsizeof("")


def _str_bytes(texts: list[str]) -> int:
    """``sum(map(sys.getsizeof, texts))``, exactly, in a fifth of the time: an ASCII
    str (nearly every title, and isascii() reads a flag) takes ``_ASCII_STR`` bytes
    plus its length; the others are asked (sys.getsizeof is exact for any str, whatever
    its characters' width, but a method call each)."""
    plain = list(filter(str.isascii, texts))
    size = _ASCII_STR * len(plain) + sum(map(len, plain))
    if len(plain) < len(texts):
        size += sum(map(sys.getsizeof, filterfalse(str.isascii, texts)))
    return size


def _plan_bytes(tasks: list[Task]) -> int:
    tags = sum(map(_tag_bytes, filter(None, map(_tags, tasks))))
    rules = _str_bytes(list(filter(None, map(_rules, tasks))))
    unset = countOf(map(_due, tasks), None) + countOf(map(_reminder, tasks), None)
    return tags + rules + (2 * len(tasks) - unset) * _MOMENT


def _tag_bytes(tags: tuple[str, ...]) -> int:
    return sys.getsizeof(tags) + sum(map(sys.getsizeof, tags))


def growth(event: Any) -> int:
    """The most ``event`` can add to its list's estimate: a task added counts whole; an
    edit its new texts, a plan change its new plan (the old ones they replace are not
    taken off: an upper bound); a completion, a reopening and a deletion nothing (a
    task of the same size, or none). Any other event (a request record's) counts the
    most any event can add."""
    kind = type(event)
    if kind is TaskList.TaskAdded:
        texts = sys.getsizeof(event.title) + _optional_str(event.description)
        series = NEXT_OCCURRENCE_OVERHEAD if event.recurs_from is not None else 0
        return TASK_OVERHEAD + texts + _plan_growth(event) + series
    if kind is TaskList.TaskEdited:
        return sys.getsizeof(event.title) + _optional_str(event.description)
    if kind is TaskList.TaskPlanned:
        return _plan_growth(event)
    if kind in _SAME_SIZE:
        return 0
    return MAX_EVENT_GROWTH


_SAME_SIZE = (TaskList.TaskCompleted, TaskList.TaskReopened, TaskList.TaskDeleted)


def _optional_str(text: str | None) -> int:
    return sys.getsizeof(text) if text else 0


def _plan_growth(event: Any) -> int:
    tags = _tag_bytes(tuple(event.tags)) if event.tags else 0
    moments = (event.due_at is not None) + (event.remind_at is not None)
    return tags + _optional_str(event.recurrence) + moments * _MOMENT


@dataclass(slots=True)
class _Entry:
    aggregate: Any
    # Counted against the bound: the measurement plus the allowance for events since.
    counted: int
    measured: int
    # The version the growth since the measurement is counted up to, and that growth.
    counted_version: int
    grown: int = 0


class ByteBoundedCache(Cache[UUID, Any]):
    """A least-recently-used cache of aggregates whose estimated sizes total at most
    ``max_bytes`` (and which holds at most ``max_count`` of them). An aggregate larger
    than the whole bound is not kept. Thread-safe; sizes are measured outside the lock."""

    def __init__(self, max_bytes: int, max_count: int | None = None) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.max_count = max_count
        self._entries: OrderedDict[UUID, _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def __bool__(self) -> bool:
        # The repository tests `if self.cache` to decide whether there is a cache at
        # all: an empty one must still count.
        return True

    @property
    def bytes(self) -> int:
        """The estimated size of everything cached."""
        return self._bytes

    @property
    def count(self) -> int:
        return len(self._entries)

    def ids(self) -> list[UUID]:
        """The cached ids, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, key: UUID, *, evict: bool = False) -> Any:
        with self._lock:
            entry = self._entries[key]  # KeyError on a miss, as the repository expects
            if evict:
                self._remove(key)
            else:
                self._entries.move_to_end(key)
            return entry.aggregate

    def put(self, key: UUID, value: Any) -> None:
        if value is None:
            return
        size = estimate_bytes(value)
        with self._lock:
            if key in self._entries:
                self._remove(key)
            if size > self.max_bytes:
                return
            self._entries[key] = _Entry(value, size, size, value.version)
            self._bytes += size
            self._evict()

    def fast_forwarded(self, key: UUID, current: Any, grown: int | None = None) -> None:
        """Account for the cached aggregate ``key`` having been brought up to date:
        ``current`` is it (or a copy of it) at its new version; ``grown``: the most the
        events applied can have added (``growth``), else the most any event can add,
        for each version since the last count.

        Measured again, in time linear in its tasks, once the growth counted passes an
        eighth of the last measurement: for a list that only gains tasks, after about
        an eighth as many again (6,000 commands of a list of 50,000), not every few
        hundred, as when each event counted the most any can add."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            if grown is None:
                grown = max(current.version - entry.counted_version, 0) * MAX_EVENT_GROWTH
            entry.grown += grown
            entry.counted_version = max(entry.counted_version, current.version)
            if entry.grown <= entry.measured // 8:
                self._recount(key, entry, entry.measured + entry.grown)
                return
            cached = entry.aggregate
        size = estimate_bytes(current)  # linear in the tasks: not under the lock
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.aggregate is not cached:
                return  # evicted or replaced meanwhile: counted by whoever did that
            entry.measured, entry.counted_version, entry.grown = size, current.version, 0
            self._recount(key, entry, size)

    def adopt(self, key: UUID, saved: Any, base_version: int, grown: int) -> None:
        """Hold ``saved``, an aggregate just saved by this process from a copy of the
        cached one at ``base_version``, in its place: the next command's copy then needs
        nothing from the store. ``grown``: the most its saved events can have added
        (``growth``). A list not cached (new, evicted, too big to keep) stays out: the
        next command loads it, as before (measuring it here would cost a list too big
        for the bound a measurement on every command)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.aggregate.version != base_version:
                # Not cached, or brought up to date meanwhile (a fast-forward: it holds
                # these events too).
                return
            entry.aggregate = saved
            self._entries.move_to_end(key)
        # Its growth counted as a fast-forward's, measured again past an eighth (and
        # evicted, as any growth may, past the bound: the next command loads it).
        self.fast_forwarded(key, saved, grown)

    def _recount(self, key: UUID, entry: _Entry, counted: int) -> None:
        self._bytes += counted - entry.counted
        entry.counted = counted
        if counted > self.max_bytes:
            self._remove(key)
        self._evict()

    def _remove(self, key: UUID) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.counted

    def _evict(self) -> None:
        while self._entries and (
            self._bytes > self.max_bytes
            or (self.max_count is not None and len(self._entries) > self.max_count)
        ):
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.counted
            self.evictions += 1


class OtherWriters:
    """Whether another process has written to the event store lately: a fast-forward
    that found events this process did not save says so (its own saves are in its
    cache already), as the retry of a save that conflicted does. While it is so, and
    for ``SECONDS`` after the last sign, no cached list is handed out unasked. A process
    alone sees no sign; one of two taking turns on the store sees one on nearly every
    fast-forward."""

    # One process taking a cached list unasked after the other writer has been quiet
    # this long costs a conflict (its group commit's transaction fails, the group is
    # saved again one by one), and that conflict turns it back to fast-forwarding.
    SECONDS = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = -math.inf

    def seen(self) -> None:
        self._until = self._clock() + self.SECONDS

    @property
    def lately(self) -> bool:
        return self._clock() < self._until


class MeasuredRepository(Repository[UUID]):
    """The library's repository, telling a byte-bounded cache when it has brought a
    cached aggregate up to date (it does so in place, growing it), and by how much at
    most: the events it applied are counted as it applies them. It also hands out
    cached aggregates unasked (``cached_copy``) and takes back the ones saved
    (``adopt``): see the module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.other_writers = OtherWriters()

    def get(self, aggregate_id: UUID, **options: Any) -> Any:
        if not isinstance(self.cache, ByteBoundedCache) or options.get("version") is not None:
            return super().get(aggregate_id, **options)
        counted = _Counted(options.pop("projector_func", project_aggregate))
        aggregate = super().get(aggregate_id, projector_func=counted, **options)
        self.cache.fast_forwarded(aggregate_id, aggregate, counted.grown)
        if counted.events and isinstance(aggregate, TaskList):
            # Past the list this process saved (adopted), events are another's.
            self.other_writers.seen()
        return aggregate

    def cached_copy(self, aggregate_id: UUID) -> Any | None:
        """A copy of the cached aggregate, the store not asked for newer events; None
        when it is not cached or another process writes lately (``OtherWriters``)."""
        if not isinstance(self.cache, ByteBoundedCache) or self.other_writers.lately:
            return None
        try:
            cached = self.cache.get(aggregate_id)
        except KeyError:
            return None
        return copy.deepcopy(cached)

    def forget(self, aggregate_id: UUID) -> None:
        """Drop the cached aggregate, if any: the next ``get`` loads it from the store."""
        if self.cache is not None:
            with contextlib.suppress(KeyError):
                self.cache.get(aggregate_id, evict=True)

    def adopt(self, saved: Any, events: list[Any]) -> None:
        """Cache ``saved``, just saved with ``events`` from a copy of the cached one."""
        if isinstance(self.cache, ByteBoundedCache) and events:
            grown = sum(map(growth, events))
            base_version = events[0].originator_version - 1
            self.cache.adopt(saved.id, saved, base_version, grown)


class _Counted:
    """A projector function that counts the growth of the events it applies to an
    aggregate it is given (a cached one, fast-forwarded); a list built from nothing
    (a cache miss) is measured whole when the cache takes it."""

    def __init__(self, project: Callable[[Any, Iterable[Any]], Any]) -> None:
        self._project = project
        self.grown = 0
        self.events = 0

    def __call__(self, aggregate: Any, events: Iterable[Any]) -> Any:
        if aggregate is None:
            return self._project(aggregate, events)
        return self._project(aggregate, map(self._count, events))

    def _count(self, event: Any) -> Any:
        self.grown += growth(event)
        self.events += 1
        return event
