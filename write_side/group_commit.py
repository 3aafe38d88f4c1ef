"""Group commit: saves that arrive while another is being committed go in together.

Every insert into the event store takes the table's lock and waits for its commit to
reach the disk, so single-event saves queue behind each other. Here the first caller
commits at once; callers arriving meanwhile wait, and the next of them commits all the
waiting saves in one transaction (one lock, one flush, one projector wake-up). A lone
save is never delayed.

A conflict (another process saved to one of the streams first) fails the whole
transaction, and the library has by then taken the events out of the aggregates: every
caller of that group gets the ``IntegrityError``, and each runs its command again
against fresh state, which is what a conflicting caller does anyway.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import Recording

Save = Callable[..., list[Recording[Any]]]


class _Entry:
    __slots__ = ("aggregates", "error", "finished", "recordings", "size")

    def __init__(self, aggregates: Sequence[Any]) -> None:
        self.aggregates = aggregates
        # How many events this caller's aggregates hold, to find its recordings.
        self.size = sum(len(aggregate.pending_events) for aggregate in aggregates)
        self.recordings: list[Recording[Any]] = []
        self.error: BaseException | None = None
        self.finished = False

    def outcome(self) -> list[Recording[Any]]:
        if self.error is not None:
            # Each caller raises an instance of its own: one exception object raised
            # in several threads at once would tangle their tracebacks.
            raise copy.copy(self.error).with_traceback(None) from self.error
        return self.recordings


class GroupCommit:
    """Wraps ``save`` (``Application.save``) so that concurrent calls share transactions."""

    def __init__(self, save: Save) -> None:
        self._save = save
        self._turn = threading.Condition()
        self._waiting: list[_Entry] = []
        self._committing = False
        # Figures for operators: transactions committed, and the saves in them.
        self.groups = 0
        self.saves = 0

    def save(self, *aggregates: Any) -> list[Recording[Any]]:
        """Like ``Application.save(*aggregates)``; returns this call's recordings."""
        entry = _Entry([aggregate for aggregate in aggregates if aggregate is not None])
        with self._turn:
            self._waiting.append(entry)
            while self._committing and not entry.finished:
                self._turn.wait()
            if entry.finished:
                return entry.outcome()
            # This caller commits everything waiting, its own save included.
            self._committing = True
            group, self._waiting = self._waiting, []
        try:
            self._commit(group)
        finally:
            with self._turn:
                self._committing = False
                self._turn.notify_all()
        return entry.outcome()

    def _commit(self, group: list[_Entry]) -> None:
        try:
            recordings = self._save(*(a for entry in group for a in entry.aggregates))
        except BaseException as error:
            for entry in group:
                entry.error = error
                entry.finished = True
            return
        self.groups += 1
        self.saves += len(group)
        start = 0
        for entry in group:
            entry.recordings = recordings[start : start + entry.size]
            start += entry.size
            entry.finished = True
