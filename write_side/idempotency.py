"""Idempotency keys: the outcome of a keyed request, kept so that a repeat gets it again.

A record is an aggregate of its own, saved in the same transaction as the events the
request produced: either both are durable or neither is. Two concurrent requests with
one key both try to create the record; the loser's save conflicts, and on retry it
finds the record and answers with the winner's outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from write_side.domain import Task, TaskLedgerError

KEY_LIFETIME = timedelta(hours=24)
_REQUEST_NAMESPACE = uuid5(NAMESPACE_URL, "https://taskledger.dev/idempotency-keys")


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A client's idempotency key and a fingerprint of the request it was sent with."""

    key: str
    fingerprint: str


class IdempotencyKeyReused(TaskLedgerError):
    """The key was already used, within its lifetime, for a different request."""


class RequestRecord(Aggregate):
    class Recorded(Aggregate.Created):
        user_id: str
        key: str
        fingerprint: str
        task: Task | None

    class Rerecorded(Aggregate.Event):
        """The key came back after it expired, with a new request."""

        fingerprint: str
        task: Task | None

        def apply(self, aggregate: RequestRecord) -> None:
            aggregate.fingerprint = self.fingerprint
            aggregate.task = self.task

    def __init__(self, user_id: str, key: str, fingerprint: str, task: Task | None) -> None:
        self.user_id = user_id
        self.key = key
        self.fingerprint = fingerprint
        self.task = task

    @staticmethod
    def create_id(user_id: str, key: str) -> UUID:
        return uuid5(_REQUEST_NAMESPACE, f"{user_id}\n{key}")

    @classmethod
    def record(cls, user_id: str, request: RequestKey, task: Task | None) -> RequestRecord:
        return cls._create(
            cls.Recorded,
            id=cls.create_id(user_id, request.key),
            user_id=user_id,
            key=request.key,
            fingerprint=request.fingerprint,
            task=task,
        )

    def rerecord(self, request: RequestKey, task: Task | None) -> None:
        self.trigger_event(self.Rerecorded, fingerprint=request.fingerprint, task=task)

    def is_live(self, now: datetime) -> bool:
        return now - self.modified_on < KEY_LIFETIME

    def outcome_for(self, request: RequestKey) -> Task | None:
        """The recorded outcome, if ``request`` is the one that was recorded."""
        if request.fingerprint != self.fingerprint:
            raise IdempotencyKeyReused(f"idempotency key {self.key!r} was used for another request")
        return self.task
