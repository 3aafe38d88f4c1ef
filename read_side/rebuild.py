"""Rebuilding the read model blue/green: ``taskledger projections rebuild``.

This code's version is built from position 0 into new tables beside the live build,
which every process keeps serving (and projecting) meanwhile. Once the new build has
caught up, ``catalogue.switch`` makes it live; it is kept projected through a grace
period while every process follows the switch, and then the build before is dropped.

Interrupted before the switch (Ctrl-C, an error), the new build is dropped at once; a
process killed outright leaves it behind, and the next rebuild drops it and starts
clean. The builder's lock makes a second rebuild under way at once refuse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from uuid import UUID

from eventsourcing.application import Application
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from infrastructure.leadership import Leadership
from read_side import catalogue
from read_side.catalogue import RETIRED_GRACE, Build
from read_side.projector import Projector
from read_side.versions import UNVERSIONED

log = logging.getLogger(__name__)


class RebuildRefused(Exception):
    """Another build of the read model is under way."""


@dataclass(frozen=True)
class Rebuilt:
    build: Build
    previous: Build | None
    position: int
    events: int
    seconds: float


def rebuild(
    ledger: Application[UUID],
    engine: Engine,
    leadership: Callable[[str], Leadership],
    *,
    version: int,
    batch_size: int = 10_000,
    grace_seconds: float = RETIRED_GRACE.total_seconds(),
    on_progress: Callable[[int, int], None] | None = None,
    on_step: Callable[[str], None] | None = None,
    still_projected: Callable[[Build], bool] = lambda _: False,
) -> Rebuilt:
    """Build ``version`` beside the live build, switch to it, drop the one before.
    ``on_progress(position, log_end)`` after each batch; ``on_step`` for each step
    an operator should see. Raises RebuildRefused when a build is already under way."""
    step = on_step or (lambda message: log.warning("%s", message))
    builder = leadership(catalogue.builder_lock_name())
    if not builder.acquire():
        holder = builder.holder()
        builder.release()
        raise RebuildRefused(
            "another build of the read model is under way"
            + (f" (held by {holder})" if holder else "")
            + ": wait for it to finish, or stop it, and run this again"
        )
    try:
        with engine.connect() as conn:
            abandoned = catalogue.building_build(conn)
        if abandoned is not None:
            catalogue.drop(engine, abandoned)
            step(f"dropped {abandoned.label}, left unfinished by an earlier build")
        with engine.begin() as conn:
            previous = catalogue.live_build(conn)
            build = catalogue.start_build(conn, version)
        live = previous.label if previous is not None else "none"
        step(f"building {build.label} beside the live {live}")
        projector = catalogue.projector(
            build, ledger, engine, batch_size=batch_size, replaying=True
        )
        started = time.monotonic()
        try:
            events = _replay(projector, ledger, on_progress)
            events += _switch(engine, projector, build, step)
        except BaseException:
            # Nothing was switched: the live build serves on, as if this never ran.
            catalogue.drop(engine, build)
            step(f"interrupted: {build.label} dropped; the live {live} serves on")
            raise
        position = projector.position()
        seconds = time.monotonic() - started
        step(f"{build.label} is live at position {position}; every process follows it")
        # Kept projected while processes still reading the one before move over, by
        # the build's leader only: a process that leads it takes every batch on its
        # tables for its own (api/services.py kept_page). Held for a round at a time,
        # so that a process that has moved over takes it between two.
        lead = leadership(build.projection)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            if lead.acquire():
                try:
                    projector.catch_up()
                finally:
                    lead.release()
            time.sleep(0.2)
        if previous is not None and previous.version == UNVERSIONED and still_projected(previous):
            # A release from before versions, still running: its processes serve it.
            step(
                f"kept {previous.label}: a projector still holds it; it is dropped once "
                "that projector stops"
            )
        elif previous is not None:
            catalogue.drop(engine, previous)
            step(f"dropped {previous.label}")
        return Rebuilt(replace(build, state=catalogue.LIVE), previous, position, events, seconds)
    finally:
        builder.release()


def _replay(
    projector: Projector,
    ledger: Application[UUID],
    on_progress: Callable[[int, int], None] | None,
) -> int:
    """Project from where the build stands to the end of the log as it grows."""
    events = 0
    while True:
        applied = projector.project_batch()
        events += applied
        if on_progress is not None:
            log_end = int(ledger.recorder.max_notification_id() or 0)
            on_progress(projector.position(), log_end)
        if applied < projector.batch_size:
            return events


def _switch(engine: Engine, projector: Projector, build: Build, step: Callable[[str], None]) -> int:
    """Catch up and switch, until the live build has not moved past this one in
    between (under a heavy write load, a few rounds), waiting out a live projection
    whose position row a stuck transaction holds."""
    events, said = 0, False
    while True:
        events += projector.catch_up()
        try:
            with engine.begin() as conn:
                if catalogue.switch(conn, build):
                    return events
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            if not said:
                step(
                    "waiting to switch: the live build's position is held by another "
                    "transaction (a stalled projection?); Ctrl-C leaves it serving"
                )
                said = True
            time.sleep(1)


# PostgreSQL's SQLSTATE for a lock not granted within lock_timeout.
LOCK_NOT_AVAILABLE = "55P03"
