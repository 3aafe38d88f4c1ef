"""How each build of the read model stands against the log: what
``taskledger projections status``, ``/readyz`` and ``/metrics`` report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from sqlalchemy import Connection, select

from read_side.catalogue import BUILDING, LIVE, RETIRED, Build
from read_side.projector import projection_check, read_position

# The states, as operators read them.
STALLED = "stalled"
MOVING = "behind and moving"


@dataclass(frozen=True)
class BuildStatus:
    build: Build
    position: int
    log_position: int
    lag_events: int
    # The age of the oldest event the build lacks (0 when it lacks none).
    lag_seconds: float
    applied_at: datetime | None
    state: str
    # How far a build under way has got, 0-100 (None for the others).
    percent: float | None = None

    @property
    def stalled(self) -> bool:
        return self.state == STALLED

    def fields(self) -> dict[str, Any]:
        """As JSON shows it (/readyz)."""
        return {
            "version": self.build.version,
            "build": self.build.id,
            "state": self.state,
            "position": self.position,
            "log_position": self.log_position,
            "lag_events": self.lag_events,
            "lag_seconds": round(self.lag_seconds, 3),
            "applied_at": self.applied_at.isoformat() if self.applied_at else None,
            **({"percent": self.percent} if self.percent is not None else {}),
        }


def build_status(
    conn: Connection,
    ledger: Application[UUID],
    build: Build,
    *,
    log_position: int,
    stall_seconds: float,
) -> BuildStatus:
    """``build`` against a log that ends at ``log_position``.

    Stalled: behind, and nothing applied for ``stall_seconds`` although an event has
    waited that long (a live build), or at all (a build under way): a stuck
    connection, a lock held, a poison event. A projection that applies batches but
    falls further behind is "behind and moving"."""
    position = read_position(conn, build.projection)
    at = projection_check.c
    applied_at = conn.execute(
        select(at.applied_at).where(at.name == build.projection)
    ).scalar_one_or_none()
    if applied_at is not None and applied_at.tzinfo is None:
        applied_at = applied_at.replace(tzinfo=UTC)
    lag_events = max(log_position - position, 0)
    lag_seconds = oldest_unprojected_age(ledger, position) if lag_events else 0.0
    now = datetime.now(UTC)
    idle = (now - applied_at).total_seconds() if applied_at is not None else float("inf")
    percent = None
    if build.state == RETIRED:
        state = RETIRED
    elif lag_events == 0:
        state = LIVE if build.state == LIVE else f"{BUILDING} (100%)"
        percent = None if build.state == LIVE else 100.0
    elif build.state == BUILDING:
        percent = round(100 * position / log_position, 1) if log_position else 100.0
        started = build_age(build, now)
        state = STALLED if min(idle, started) > stall_seconds else f"{BUILDING} ({percent:g}%)"
    else:
        state = STALLED if min(idle, lag_seconds) > stall_seconds else MOVING
    return BuildStatus(
        build, position, log_position, lag_events, lag_seconds, applied_at, state, percent
    )


def build_age(build: Build, now: datetime) -> float:
    """Seconds since the build began, as far as the catalogue tells (inf: unknown)."""
    began = build.created_at
    if began is None:
        return float("inf")
    if began.tzinfo is None:
        began = began.replace(tzinfo=UTC)
    return (now - began).total_seconds()


def oldest_unprojected_age(ledger: Application[UUID], position: int) -> float:
    """Seconds since the first event after ``position`` was saved (0: there is none)."""
    found = ledger.recorder.select_notifications(start=position, limit=1, inclusive_of_start=False)
    if not found:
        return 0.0
    saved_at = getattr(ledger.mapper.to_domain_event(found[0]), "timestamp", None)
    if not isinstance(saved_at, datetime):
        return 0.0
    return max((datetime.now(UTC) - saved_at).total_seconds(), 0.0)
