"""Builds of the read model, and which one is served: blue/green rebuilds.

A *build* is one set of read tables with its own position row, made by one version of
the projection (``read_side.versions``). One build is ``live``: every process serves it.
A new build is made beside it (``building``) from position 0 while the live one keeps
being served and projected; once it has caught up, ``switch`` makes it live in one
transaction that also holds both projections' positions still, so the new build is
never behind the old one at the moment readers move to it. The build before is
``retired``, and dropped a grace period later, once every process has followed.

Build 0 has the tables' own names (``task_view``...) and the position row ``tasks``:
the tables of a deployment that never rebuilt, or that predates versions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    String,
    Table,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlmodel import SQLModel

from read_side.projector import PROJECTION_CHANNEL, BatchWatcher, Projector, projection_check
from read_side.tables import DEFAULT_PROJECTION, ViewTables, projection_position
from read_side.versions import UNVERSIONED

log = logging.getLogger(__name__)

read_model_build = Table(
    "read_model_build",
    SQLModel.metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    # building | live | retired | dropped (kept: build numbers are never reused)
    Column("state", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # When it became live, or was retired.
    Column("switched_at", DateTime(timezone=True)),
)

BUILDING, LIVE, RETIRED, DROPPED = "building", "live", "retired", "dropped"

# What the projection channel carries when a build is made live ("switched <id>").
SWITCHED = "switched"
# How long a switch waits for the live projection's position row (PostgreSQL).
SWITCH_LOCK_TIMEOUT = "2s"

# How long a retired build's tables outlive the switch: every process follows the
# catalogue within a second (its read-model check), and queries under way finish.
RETIRED_GRACE = timedelta(seconds=5)


@dataclass(frozen=True)
class Build:
    id: int
    version: int
    # Where it stands, as last read: not part of which build it is.
    state: str = field(compare=False)
    switched_at: datetime | None = field(default=None, compare=False)
    created_at: datetime | None = field(default=None, compare=False)

    @property
    def suffix(self) -> str:
        return "" if self.id == 0 else f"_v{self.version}_b{self.id}"

    @property
    def projection(self) -> str:
        """Its row in projection_position and projection_check."""
        return DEFAULT_PROJECTION + self.suffix

    @property
    def tables(self) -> ViewTables:
        return ViewTables.of_build(self.suffix)

    @property
    def label(self) -> str:
        return f"v{self.version} (build {self.id})"


def _build(row: Any) -> Build:
    return Build(row.id, row.version, row.state, row.switched_at, row.created_at)


def builds(conn: Connection) -> list[Build]:
    """Every build not yet dropped, oldest first."""
    at = read_model_build.c
    rows = conn.execute(
        select(at.id, at.version, at.state, at.created_at, at.switched_at)
        .where(at.state != DROPPED)
        .order_by(at.id)
    )
    return [_build(row) for row in rows]


def live_build(conn: Connection) -> Build | None:
    return next((build for build in builds(conn) if build.state == LIVE), None)


def building_build(conn: Connection) -> Build | None:
    return next((build for build in builds(conn) if build.state == BUILDING), None)


def ensure_live_build(conn: Connection, version: int, *, unversioned: int) -> tuple[Build, bool]:
    """The live build, and whether it was made now (at first start-up, or in a new
    read file). Tables already there without a catalogue (made before versions
    existed) become build 0 of version ``unversioned``, served while this code's
    version is built beside them; otherwise build 0 is this code's version, its tables
    made empty."""
    live = live_build(conn)
    if live is not None:
        # (Without the lock: a switch under way must not hold a start-up.)
        return live, False
    lock_catalogue(conn)
    live = live_build(conn)
    if live is not None:
        return live, False
    now, adopted = datetime.now(UTC), False
    if conn.execute(select(func.count()).select_from(read_model_build)).scalar_one():
        # (Builds were made, and none is live: make another one live.)
        build = Build(_next_id(conn), version, LIVE, now, now)
    else:
        adopted = inspect(conn).has_table(ViewTables.of_build("").task.name)
        build = Build(0, unversioned if adopted else version, LIVE, now, now)
    conn.execute(
        insert(read_model_build).values(
            id=build.id,
            version=build.version,
            state=LIVE,
            created_at=build.switched_at,
            switched_at=build.switched_at,
        )
    )
    _make_tables(conn, build)
    if adopted:
        log.warning(
            "read tables made before versions were adopted as %s; version %d is built beside them",
            build.label,
            version,
        )
    return build, not adopted


def start_build(conn: Connection, version: int) -> Build:
    """A new, empty build of ``version``, beside the live one. The caller holds the
    builder's lock (``builder_lock_name``): at most one build is under way."""
    lock_catalogue(conn)
    now = datetime.now(UTC)
    build = Build(_next_id(conn), version, BUILDING, None, now)
    conn.execute(
        insert(read_model_build).values(
            id=build.id, version=version, state=BUILDING, created_at=now
        )
    )
    _make_tables(conn, build)
    return build


def switch(conn: Connection, build: Build) -> bool:
    """Make ``build`` live, if it has caught up with the live build: False when it is
    behind (catch up and try again). Both positions are locked for the comparison, so
    the live one cannot move past the new one before readers are sent to it."""
    is_postgres = conn.dialect.name == "postgresql"
    if is_postgres:
        # A live projection stuck holding its row (a stalled transaction) must not
        # hold the catalogue, and every process starting meanwhile, with it.
        conn.execute(select(func.set_config("lock_timeout", SWITCH_LOCK_TIMEOUT, True)))
    lock_catalogue(conn)
    live = live_build(conn)
    if live is not None and live.id == build.id:
        return True
    names = [build.projection] + ([live.projection] if live is not None else [])
    at = projection_position.c
    locking = select(at.name, at.position).where(at.name.in_(names))
    if is_postgres:
        locking = locking.order_by(at.name).with_for_update()
    positions = {row.name: int(row.position) for row in conn.execute(locking)}
    if live is not None and positions.get(build.projection, 0) < positions.get(live.projection, 0):
        return False
    now = datetime.now(UTC)
    at_build = read_model_build.c
    if live is not None:
        conn.execute(
            update(read_model_build)
            .where(at_build.id == live.id)
            .values(state=RETIRED, switched_at=now)
        )
    conn.execute(
        update(read_model_build).where(at_build.id == build.id).values(state=LIVE, switched_at=now)
    )
    if is_postgres:
        # Every process listening follows at once, not at its next check (delivered
        # on commit).
        conn.execute(select(func.pg_notify(PROJECTION_CHANNEL, f"{SWITCHED} {build.id}")))
    return True


def drop(engine: Engine, build: Build) -> None:
    """Drop a build that is not live: its tables, position and check rows (its entry
    stays, marked dropped)."""
    with engine.begin() as conn:
        lock_catalogue(conn)
        at = read_model_build.c
        state = conn.execute(select(at.state).where(at.id == build.id)).scalar_one_or_none()
        if state == LIVE:
            raise ValueError(f"{build.label} is live: only a switch retires it")
        for table in build.tables.all():
            table.drop(conn, checkfirst=True)
        conn.execute(
            delete(projection_position).where(projection_position.c.name == build.projection)
        )
        conn.execute(delete(projection_check).where(projection_check.c.name == build.projection))
        conn.execute(
            update(read_model_build)
            .where(at.id == build.id)
            .values(state=DROPPED, switched_at=datetime.now(UTC))
        )


def drop_retired(
    engine: Engine,
    *,
    grace: timedelta = RETIRED_GRACE,
    projected: Callable[[Build], bool] = lambda _: False,
) -> list[Build]:
    """Drop the builds retired more than ``grace`` ago; return them. A build made
    before versions that a projector still ``projected`` (an older release's, which
    knows nothing of the switch, and whose processes still serve it) is kept until
    that projector stops."""
    with engine.connect() as conn:
        cutoff = datetime.now(UTC) - grace
        due = [
            build
            for build in builds(conn)
            if build.state == RETIRED
            and build.switched_at is not None
            and _aware(build.switched_at) <= cutoff
        ]
    # Processes of this code stop projecting a retired build at once (its fence);
    # only a release from before versions knows nothing of the switch.
    due = [b for b in due if b.version != UNVERSIONED or not projected(b)]
    for build in due:
        drop(engine, build)
        log.warning("read model %s dropped: retired by a switch %s ago", build.label, grace)
    return due


def projector(
    build: Build,
    ledger: Application[UUID],
    engine: Engine,
    *,
    batch_size: int,
    replaying: bool = False,
    on_projected: Callable[[int], None] | None = None,
    watcher: BatchWatcher | None = None,
) -> Projector:
    """The projector of ``build``: checked against the log, and fenced off it once a
    switch retires it (not one more batch: no process may have seen an event from it
    that the new live build lacks). ``replaying``: a build from the start of the log,
    which nobody reads yet."""
    return Projector(
        ledger,
        engine,
        name=build.projection,
        tables=build.tables,
        anchored=True,
        batch_size=batch_size,
        replaying=replaying,
        on_projected=on_projected,
        fence=retired(build),
        watcher=watcher,
    )


def retired(build: Build) -> Retired:
    """A projector's fence (``Projector(fence=...)``): why ``build`` may no longer be
    written, once a switch has retired or dropped it."""
    return Retired(build)


class Retired:
    """The fence of a build's projector (read_side.projector.Fence): the build's state."""

    def __init__(self, build: Build) -> None:
        self.build = build
        at = read_model_build.c
        self.query = select(at.state).where(at.id == build.id)

    def reason(self, state: str | None) -> str | None:
        if state in (BUILDING, LIVE):
            return None
        return f"{self.build.label} is {state or 'gone'}: another build is live"


def builder_lock_name() -> str:
    """The leadership a build's maker holds (the rebuild command, or a projector
    building its code's version): two builds at once are refused."""
    return f"{DEFAULT_PROJECTION}:build"


def lock_catalogue(conn: Connection) -> None:
    """Serialise changes of the catalogue, until the transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_CATALOGUE_LOCK)))
    else:
        # SQLite: the first write of a transaction takes the database's write lock.
        conn.execute(text("UPDATE read_model_build SET id = id WHERE id < 0"))


# A fixed key for pg_advisory_xact_lock (any 64-bit number no other lock uses).
_CATALOGUE_LOCK = 0x7461736B6C656467


def _next_id(conn: Connection) -> int:
    highest = conn.execute(select(func.max(read_model_build.c.id))).scalar_one_or_none()
    return int(highest if highest is not None else -1) + 1


def _make_tables(conn: Connection, build: Build) -> None:
    for table in build.tables.all():
        table.create(conn, checkfirst=True)
    at = projection_position.c
    if conn.execute(select(at.name).where(at.name == build.projection)).first() is None:
        conn.execute(insert(projection_position).values(name=build.projection, position=0))


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive UTC datetimes.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
