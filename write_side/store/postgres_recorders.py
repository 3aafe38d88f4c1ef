"""The event store's PostgreSQL recorders, inserting records as four arrays sent in
binary instead of one array of the library's composite type.

The library hands its insert one parameter, an array of ``stored_event_<id type>``
composites. psycopg dumps composites as text, in Python, quoting each field with
regular expressions: a snapshot of a 50,000-task list (25 MB of state) took 1.3 s to
insert on a quiet machine here (2.4 s on a busy one) and held the interpreter lock for
up to 0.2 s at a time (0.5 s), while every other request of the process waited (a small
user's list p99 reached 621 ms on PostgreSQL). Sent as ``unnest(uuid[], bigint[],
text[], bytea[])`` in binary, the same insert takes 0.3 s and holds the lock for at
most ~13 ms; a group commit of 7 events costs 0.5 ms of CPU instead of 0.6
(bench/store_inserts.py measures both; bench/README.md has the figures).

The rows inserted, their order (so the notification ids that the events take in
turn) and the statement's result are the library's. Only the parameters' encoding
changes; the composite type is still created, as the library's optional database
functions (``ENABLE_DB_FUNCTIONS``, not used here) take it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
)
from psycopg import Cursor
from psycopg.sql import SQL, Identifier


class ArrayInsertRecorder(PostgresAggregateRecorder):
    """The library's aggregate recorder (snapshots use it) with the array insert."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"):
        super().__init__(datastore, events_table_name=events_table_name)
        # Replaced here, before PostgresApplicationRecorder (which lists this class
        # after itself, see LedgerApplicationRecorder) appends its RETURNING clause.
        # %b: binary. With %s psycopg sends a bytea array as text, escaped in Python
        # (1.4 s for the 25 MB snapshot, the lock held 0.5 s).
        self.insert_events_statement = SQL(
            "INSERT INTO {schema}.{table} AS t "
            "(originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[])"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            id_type=Identifier(self.datastore.originator_id_type),
        )

    def _insert_stored_events(
        self, curs: Cursor[Any], stored_events: Sequence[StoredEvent], **_: Any
    ) -> None:
        curs.execute(
            self.insert_events_statement,
            (
                [event.originator_id for event in stored_events],
                [event.originator_version for event in stored_events],
                [event.topic for event in stored_events],
                [event.state for event in stored_events],
            ),
        )


class LedgerApplicationRecorder(PostgresApplicationRecorder, ArrayInsertRecorder):
    """The library's application recorder (the events) with the array insert: its
    ``_insert_stored_events`` locks the table and notifies, then calls the next class
    in line, which is ``ArrayInsertRecorder`` rather than the library's."""


class LedgerPostgresFactory(PostgresFactory):
    """The library's PostgreSQL factory, making the recorders above."""

    aggregate_recorder_class = ArrayInsertRecorder
    application_recorder_class = LedgerApplicationRecorder


def uses_library_postgres(topic: str) -> bool:
    """Whether ``topic`` (PERSISTENCE_MODULE) names the library's PostgreSQL module or
    factory, which this module's factory then stands in for."""
    return topic in ("eventsourcing.postgres", "eventsourcing.postgres:PostgresFactory")
