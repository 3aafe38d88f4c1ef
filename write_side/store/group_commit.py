"""Group commit: saves that arrive while another is being committed go in together.

Every insert into the event store takes the table's lock and waits for its commit to
reach the disk, so single-event saves queue behind each other. Here the first caller
commits at once; callers arriving meanwhile wait, and the next of them commits all the
waiting saves in one transaction (one lock, one flush, one projector wake-up). A lone
save is never delayed.

A conflict (another process saved to one of the streams first) fails the whole
transaction: the group's saves are then committed one by one, so that only the caller
whose stream conflicts gets the ``IntegrityError`` (and runs its command again).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from eventsourcing.persistence import IntegrityError, OperationalError, Recording

Save = Callable[..., list[Recording[Any]]]


class CommitInterrupted(OperationalError):
    """The save's transaction was interrupted; it may or may not have committed."""


class CommitTimeout(OperationalError):
    """The save waited too long for the transaction ahead of it; it was not attempted,
    or (when its group was under way) its outcome is unknown."""


class _Entry:
    __slots__ = ("error", "events", "finished", "recordings", "taken")

    def __init__(self, aggregates: Sequence[Any]) -> None:
        # Collected here, in the caller's thread: the group's transaction saves the
        # events themselves, and can save them again alone after a conflict.
        self.events = [event for aggregate in aggregates for event in aggregate.collect_events()]
        self.recordings: list[Recording[Any]] = []
        self.error: Exception | None = None
        self.taken = False  # into a group being committed
        self.finished = False

    def fail(self, error: BaseException) -> None:
        if isinstance(error, Exception):
            self.error = error
        else:
            # KeyboardInterrupt and the like belong to the thread they were raised in.
            self.error = CommitInterrupted(repr(error))
        self.finished = True

    def outcome(self) -> list[Recording[Any]]:
        if self.error is None:
            return self.recordings
        # Each caller raises an instance of its own: one exception object raised in
        # several threads at once would tangle their tracebacks.
        try:
            error = copy.copy(self.error).with_traceback(None)
        except Exception:
            error = CommitInterrupted(repr(self.error))
        raise error from self.error


class GroupCommit:
    """Wraps ``save`` (``Application.save``) so that concurrent calls share transactions."""

    def __init__(
        self,
        save: Save,
        *,
        wait_limit: float = 10.0,
        on_committed: Callable[[int], None] | None = None,
    ) -> None:
        self._save = save
        # Told the number of saves in each transaction committed (operators' figures).
        self._on_committed = on_committed
        # Most seconds a caller waits for the commit ahead of it (a stuck connection
        # must not hold up every writer of the process for as long as TCP takes).
        self._wait_limit = wait_limit
        self._turn = threading.Condition()
        self._waiting: list[_Entry] = []
        self._committing = False
        # Figures for operators: transactions committed, and the saves in them.
        self.groups = 0
        self.saves = 0

    def save(self, *aggregates: Any) -> list[Recording[Any]]:
        """Like ``Application.save(*aggregates)``; returns this call's recordings."""
        entry = _Entry([aggregate for aggregate in aggregates if aggregate is not None])
        deadline = time.monotonic() + self._wait_limit
        with self._turn:
            self._waiting.append(entry)
            while (self._committing or entry.taken) and not entry.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if not entry.taken:
                        self._waiting.remove(entry)
                    raise CommitTimeout(f"no commit within {self._wait_limit} s")
                self._turn.wait(remaining)
            if entry.finished:
                return entry.outcome()
            # This caller commits everything waiting, its own save included.
            self._committing = True
            group, self._waiting = self._waiting, []
            for waiting in group:
                waiting.taken = True
        try:
            self._commit(group)
        finally:
            # Whatever interrupted the commit, no caller of the group may wait forever
            # or take its entry for uncommitted.
            for waiting in group:
                if not waiting.finished:
                    waiting.fail(CommitInterrupted("the group's commit was interrupted"))
            with self._turn:
                self._committing = False
                self._turn.notify_all()
        return entry.outcome()

    def _commit(self, group: list[_Entry]) -> None:
        try:
            recordings = self._save(*(event for entry in group for event in entry.events))
        except IntegrityError as error:
            if len(group) == 1:
                group[0].fail(error)
                return
            for entry in group:
                self._commit([entry])
            return
        except BaseException as error:
            for entry in group:
                entry.fail(error)
            if not isinstance(error, Exception):
                raise
            return
        self.groups += 1
        self.saves += len(group)
        if self._on_committed is not None:
            self._on_committed(len(group))
        start = 0
        for entry in group:
            entry.recordings = recordings[start : start + len(entry.events)]
            start += len(entry.events)
            entry.finished = True
        if start != len(recordings):
            raise RuntimeError("the store answered a recording count unlike the events saved")
