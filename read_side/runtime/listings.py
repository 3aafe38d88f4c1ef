"""Listings with a memory: a page read once is served again while the user's tasks
stand still.

Each request still asks the database one thing, the user's last projected position (a
primary-key lookup), and only on a change runs the listing query. The position is read
before the rows, so a stored page is never newer than the position it is filed under,
and a change always shows: across processes too, since the position comes from the
shared tables, not from this process's memory.

The same holds for a user's other answers from the tables (their tags, their stats):
any answer is filed by what it was asked with. An answer judged at a moment (a stats
of today, an ``overdue`` listing) is filed without its moment but with the span of
moments at which it is the same answer, read in the same statement
(``queries.MomentSpan``: until now passes a pending task's due date, or a midnight),
and is served again only at a moment in that span. ``Services`` keeps those in a
cache of their own, so that they never push out the plain pages.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import replace
from datetime import datetime

from sqlalchemy import Connection

from read_side import queries, versions
from read_side.queries import MomentSpan, TaskFilter
from read_side.tables import ViewTables

Page = tuple[str, int]  # the JSON array of task documents, and the total that match
Answer = tuple[str, int]  # a JSON document, and a number riding with it (a page's total)
# An answer, and the moments at which it holds (None: it does not depend on the moment).
Judged = tuple[Answer, MomentSpan | None]


class BuildSwitched(Exception):
    """Another build of the read model was made live since this process looked."""


class ChangeCount:
    """A sequence lock over the served tables, per stream (a user's task list), moved
    by the batches this process's projector commits (``BatchWatcher``): a stream's
    count moves on each time a batch changed it, and is unreadable while a batch that
    may change it is under way (two may overlap while a stopped worker's last one
    finishes). Until a batch has told its streams, every stream is.

    A page filed with the count its user's stream had when it was read is still the
    tables' page while that count stands there, provided every batch on those tables is
    this process's own: it is then answered from memory alone, without asking the
    database for the user's position (``CachedListings.kept``). Another user's batch
    leaves it so; a batch that applied nothing leaves every count where it was.

    Counts are a sequence number of the batches that changed anything: a stream's is
    that of the last batch that changed it. Only the ``max_streams`` changed last are
    remembered: any other stream's count is the floor, at least the count of every
    stream forgotten, which moves on as streams are forgotten. A count can thus move
    without a change (a page is read again), never stand still across one."""

    def __init__(self, max_streams: int = 65_536) -> None:
        self._sequence = 0
        self._floor = 0
        self._last: OrderedDict[Hashable, int] = OrderedDict()
        self._max_streams = max_streams
        # Batches under way whose streams are not yet told, and the streams of those
        # that told them (a stream twice when two batches may change it).
        self._untold = 0
        self._busy: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def stable(self, stream: Hashable) -> int | None:
        """The stream's count now; None while a batch under way may change it."""
        with self._lock:
            if self._untold or stream in self._busy:
                return None
            return self._last.get(stream, self._floor)

    def batch_begins(self) -> Batch:
        """A batch's transaction begins: every stream is unreadable until ``tell``."""
        with self._lock:
            self._untold += 1
        return Batch(self)

    def moved(self) -> None:
        """The tables changed otherwise (rebuilt, switched, found wrong, or moved on
        by a projector that is not this process's): every count moves."""
        with self._lock:
            self._move_all()

    def _move_all(self) -> None:
        self._sequence += 1
        self._floor = self._sequence
        self._last.clear()

    def _told(self, streams: frozenset[Hashable]) -> None:
        with self._lock:
            self._untold -= 1
            for stream in streams:
                self._busy[stream] = self._busy.get(stream, 0) + 1

    def _ended(self, streams: frozenset[Hashable] | None, *, changed: bool) -> None:
        with self._lock:
            if streams is None:
                self._untold -= 1
                if changed:  # which streams, unknown
                    self._move_all()
                return
            for stream in streams:
                left = self._busy.pop(stream) - 1
                if left:
                    self._busy[stream] = left
            if not changed:
                return
            self._sequence += 1
            for stream in streams:
                self._last[stream] = self._sequence
                self._last.move_to_end(stream)
            while len(self._last) > self._max_streams:
                self._floor = self._last.popitem(last=False)[1]


class Batch:
    """One batch under way, as its ChangeCount follows it."""

    __slots__ = ("_count", "_streams")

    def __init__(self, count: ChangeCount) -> None:
        self._count = count
        self._streams: frozenset[Hashable] | None = None

    def tell(self, streams: Iterable[Hashable]) -> None:
        """The streams this batch may change (once, before it commits)."""
        if self._streams is not None:
            raise RuntimeError("a batch tells its streams once")
        self._streams = frozenset(streams)
        self._count._told(self._streams)

    def ended(self, *, changed: bool) -> None:
        """The batch's transaction has ended (``changed``: it may have changed the
        tables; False only when nothing was applied)."""
        self._count._ended(self._streams, changed=changed)


class CachedListings:
    """At most ``max_pages`` pages and ``max_bytes`` of their text (the least recently
    used go first): a flood of distinct big pages costs this process no more than that.
    A page larger than the whole bound is served and not kept."""

    def __init__(self, max_pages: int = 512, max_bytes: int = 32 * 2**20) -> None:
        # (build's table, user, what was asked) -> the kept answer
        self._pages: OrderedDict[tuple[str, str, Hashable], _Kept] = OrderedDict()
        self._max_pages = max_pages
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        """The memory the kept pages' text takes."""
        return self._bytes

    def clear(self) -> None:
        """Forget every page: the tables they came from were wrong, or rebuilt."""
        with self._lock:
            self._pages.clear()
            self._bytes = 0

    def page(
        self,
        conn: Connection,
        tables: ViewTables,
        user_id: str,
        spec: TaskFilter,
        *,
        build_id: int | None = None,
        count: int | None = None,
        version: int = versions.READ_MODEL_VERSION,
    ) -> Page:
        """A page from the build whose ``tables`` are served (``build_id``). Pages are
        filed by build: two versions of the read model may show the same position
        differently. Raises BuildSwitched when another build is live now. ``count``:
        the ChangeCount read before anything else (None: a batch was under way).
        ``version``: the build's, as queries.list_tasks."""

        def listed() -> Judged:
            documents, total, span = queries.list_tasks(
                conn, tables, user_id, spec, version=version
            )
            return (f"[{','.join(documents)}]", total), span

        asked, moment = filed(spec)
        return self.answer(
            conn, tables, user_id, asked, listed, build_id=build_id, count=count, moment=moment
        )

    def kept_at(
        self,
        tables: ViewTables,
        user_id: str,
        asked: Hashable,
        position: int,
        *,
        moment: datetime | None = None,
    ) -> Answer | None:
        """The kept answer, if it was read at the user's ``position`` (read by the
        caller: read_side/runtime/async_positions.py) and holds at ``moment``; None
        otherwise. A page is asked as ``filed(spec)`` says."""
        return self._kept_if(tables, user_id, asked, moment, lambda kept: kept.position == position)

    def kept(
        self,
        tables: ViewTables,
        user_id: str,
        asked: Hashable,
        count: int,
        *,
        moment: datetime | None = None,
    ) -> Answer | None:
        """The kept answer, if it was read or confirmed under ``count`` (a stable
        ChangeCount: the tables have not changed since) and holds at ``moment``; None
        otherwise."""
        return self._kept_if(tables, user_id, asked, moment, lambda kept: kept.count == count)

    def _kept_if(
        self,
        tables: ViewTables,
        user_id: str,
        asked: Hashable,
        moment: datetime | None,
        current: Callable[[_Kept], bool],
    ) -> Answer | None:
        key = (tables.task.name, user_id, asked)
        with self._lock:
            stored = self._pages.get(key)
            if stored is None or not current(stored) or not stored.holds_at(moment):
                return None
            self._pages.move_to_end(key)
            return stored.answer

    def answer(
        self,
        conn: Connection,
        tables: ViewTables,
        user_id: str,
        asked: Hashable,
        compute: Callable[[], Judged],
        *,
        build_id: int | None = None,
        count: int | None = None,
        moment: datetime | None = None,
    ) -> Answer:
        """The answer to ``asked`` about the user: kept, or ``compute()``d (on
        ``conn``, after the user's position was read). Raises BuildSwitched as
        ``page`` does. ``count`` as for ``page``: what the answer is filed under.
        ``moment``: what an answer judged at a moment is judged at (its span must
        hold it)."""
        position, live = queries.user_position(conn, tables, user_id)
        if build_id is not None and live is not None and live != build_id:
            raise BuildSwitched(live)
        key = (tables.task.name, user_id, asked)
        with self._lock:
            stored = self._pages.get(key)
            if stored is not None and stored.position == position and stored.holds_at(moment):
                self._pages.move_to_end(key)
                # Confirmed under this count: still the page while the count stands.
                # (Under none, a batch was under way: the count it had stands.)
                if count is not None:
                    stored.count = count
                return stored.answer
        answer, span = compute()
        size = sys.getsizeof(answer[0])
        if size > self._max_bytes:
            return answer
        with self._lock:
            replaced = self._pages.pop(key, None)
            if replaced is not None:
                self._bytes -= replaced.size
            self._pages[key] = _Kept(position, answer, size, count, span)
            self._bytes += size
            while len(self._pages) > self._max_pages or self._bytes > self._max_bytes:
                self._bytes -= self._pages.popitem(last=False)[1].size
        return answer


def filed(spec: TaskFilter) -> tuple[TaskFilter, datetime | None]:
    """What a page is filed under, and the moment it is asked at: one judged at a moment
    is filed without it, to be served again at any moment its span holds."""
    if spec.now is None:
        return spec, None
    return replace(spec, now=None), spec.moment()


class _Kept:
    """A kept answer: the user's position it was read at, its size in bytes, the
    ChangeCount it was read or last confirmed under (None: none stable), and for an
    answer judged at a moment, the moments at which it holds."""

    __slots__ = ("answer", "count", "position", "size", "span")

    def __init__(
        self,
        position: int,
        answer: Answer,
        size: int,
        count: int | None,
        span: MomentSpan | None = None,
    ) -> None:
        self.position, self.answer, self.size, self.count = position, answer, size, count
        self.span = span

    def holds_at(self, moment: datetime | None) -> bool:
        """Still the answer at ``moment`` (None: asked at none), as far as time goes."""
        if self.span is None:
            return moment is None
        return moment is not None and self.span.holds(moment)
