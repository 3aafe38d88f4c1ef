"""Idempotency keys: the outcome of a keyed request, kept so that a repeat gets it again.

A record is an aggregate of its own, saved in the same transaction as the events the
request produced: either both are durable or neither is. Two concurrent requests with
one key both try to create the record; the loser's save conflicts, and on retry it
finds the record and answers with the winner's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from write_side.domain import Task
from write_side.errors import TaskLedgerError

KEY_LIFETIME = timedelta(hours=24)
_REQUEST_NAMESPACE = uuid5(NAMESPACE_URL, "https://taskledger.dev/idempotency-keys")


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A client's idempotency key and a fingerprint of the request it was sent with."""

    key: str
    fingerprint: str


class IdempotencyKeyReused(TaskLedgerError):
    """The key was already used, within its lifetime, for a different request."""


def _no_next_task(state: dict[str, Any]) -> None:
    # Version 1 was recorded before recurring tasks: no request added a next one.
    state["next_task"] = None


class RequestRecord(Aggregate):
    # Version 2 (with recurring tasks) also records the next occurrence a completion
    # added, so that a repeat answers it too.
    class Recorded(Aggregate.Created):
        class_version = 2
        upcast_v1_v2 = staticmethod(_no_next_task)

        user_id: str
        key: str
        fingerprint: str
        task: Task | None
        next_task: UUID | None

    class Rerecorded(Aggregate.Event):
        """The key came back after it expired, with a new request."""

        class_version = 2
        upcast_v1_v2 = staticmethod(_no_next_task)

        fingerprint: str
        task: Task | None
        next_task: UUID | None

        def apply(self, aggregate: RequestRecord) -> None:
            aggregate.fingerprint = self.fingerprint
            aggregate.task = self.task
            aggregate.next_task = self.next_task

    def __init__(
        self, user_id: str, key: str, fingerprint: str, task: Task | None, next_task: UUID | None
    ) -> None:
        self.user_id = user_id
        self.key = key
        self.fingerprint = fingerprint
        self.task = task
        self.next_task = next_task

    @staticmethod
    def create_id(user_id: str, key: str) -> UUID:
        return uuid5(_REQUEST_NAMESPACE, f"{user_id}\n{key}")

    @classmethod
    def record(
        cls, user_id: str, request: RequestKey, task: Task | None, next_task: UUID | None = None
    ) -> RequestRecord:
        return cls._create(
            cls.Recorded,
            id=cls.create_id(user_id, request.key),
            user_id=user_id,
            key=request.key,
            fingerprint=request.fingerprint,
            task=task,
            next_task=next_task,
        )

    def rerecord(
        self, request: RequestKey, task: Task | None, next_task: UUID | None = None
    ) -> None:
        self.trigger_event(
            self.Rerecorded, fingerprint=request.fingerprint, task=task, next_task=next_task
        )

    def is_live(self, now: datetime) -> bool:
        return now - self.modified_on < KEY_LIFETIME

    def outcome_for(self, request: RequestKey) -> Task | None:
        """The recorded outcome, if ``request`` is the one that was recorded."""
        if request.fingerprint != self.fingerprint:
            raise IdempotencyKeyReused(f"idempotency key {self.key!r} was used for another request")
        return self.task
