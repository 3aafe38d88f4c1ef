"""Wiring: builds the write side, the read side and the verifier from Settings.

Building creates no table and writes no file (on PostgreSQL it does connect: the event
store's recorders read the database's types): ``start()`` is the one place that creates
the data folder, the tables and the development secret, and starts the threads."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from anyio import CapacityLimiter
from sqlalchemy import Connection, inspect

from api import metrics
from api.auth import TokenVerifier
from api.keys import JwksKeys
from api.read_your_writes import ProjectionProgress
from api.request_context import timed
from api.settings import Settings
from api.turns import UserTurns
from infrastructure.leadership import FileLeadership, Leadership, PostgresLeadership
from infrastructure.listener import PostgresListener
from read_side import catalogue, versions
from read_side.catalogue import Build
from read_side.projector import (
    NO_GENERATION,
    PROJECTION_CHANNEL,
    check_read_model,
    is_first_generation,
    read_position,
)
from read_side.queries import MomentSpan, TaskFilter, list_id_of
from read_side.runtime.async_positions import AsyncPositions
from read_side.runtime.engine import (
    create_read_engine,
    create_read_tables,
    damage,
    file_identity,
    is_unreadable,
    sqlite_file,
)
from read_side.runtime.health import ReadModelHealth
from read_side.runtime.keeper import ReadModelKeeper
from read_side.runtime.listings import (
    BuildSwitched,
    CachedListings,
    ChangeCount,
    Judged,
    filed,
)
from read_side.status import BuildStatus, build_status
from read_side.tables import DEFAULT_PROJECTION, LIVE_TABLES, ViewTables
from write_side import TaskLedger

log = logging.getLogger(__name__)

T = TypeVar("T")


class NotStarted(Exception):
    """A request reached the app before its start-up ran (answered 503)."""


class ReadModelUnavailable(Exception):
    """The read tables are wrong, damaged or being rebuilt (answered 503): a listing
    from them would be wrong, not merely late."""


class Services:
    """Everything a running process shares: one per process, built at start-up."""

    def __init__(
        self,
        settings: Settings,
        *,
        with_projector: bool | None = None,
        read_model_version: int | None = None,
    ) -> None:
        self.settings = settings
        # The read model version this code builds and reads (read_side.versions).
        self.version = read_model_version or versions.READ_MODEL_VERSION
        storage = settings.storage
        self.is_postgres = storage.kind == "postgres"
        # The projector's (transactions, few connections) and the queries' (autocommit).
        self.read_engine = create_read_engine(storage.read_url, pool_size=2)
        self.query_engine = create_read_engine(
            storage.read_url, pool_size=settings.db_pool_size, autocommit=True
        )
        self.ledger = TaskLedger(
            env=storage.event_store_env,
            connect_options=storage.connect_options,
            on_saved=self._saved,
            on_counted=metrics.counted,
            on_committed=metrics.committed,
        )
        # One thread at most per user's commands at a time (api.turns).
        self.turns = UserTurns()
        # The threads commands run in, made at start-up on the event loop (None: the
        # route threads).
        self.command_limiter: CapacityLimiter | None = None
        # Built at start-up: in development its shared secret may be made then.
        self.verifier: TokenVerifier | None = None
        self.listings = CachedListings(max_bytes=settings.listing_cache_bytes)
        # Answers judged at a moment (stats, overdue listings): each of use while no
        # due date or midnight passes, kept apart so that they never push out the
        # pages above.
        self.moments = CachedListings(max_pages=256, max_bytes=settings.listing_cache_bytes // 16)
        # Moved by every batch this process projects: see kept_page.
        self.changes = ChangeCount()
        # Kept pages confirmed on the event loop (PostgreSQL): see checked_page.
        self.positions = AsyncPositions(storage.conninfo) if self.is_postgres else None
        self.health = ReadModelHealth()
        # The live build of the read model, followed from the catalogue (None: not
        # yet looked), and why this code cannot read it (None: it can).
        self.served: Build | None = None
        self._unreadable_build: str | None = None
        # The rebuild the served tables were last seen at (None: not yet looked), and
        # which SQLite file they are in.
        self._generation: str | None = None
        self._read_file = sqlite_file(self.query_engine)
        self._read_file_identity = file_identity(self._read_file) if self._read_file else None
        self._checking = threading.Lock()
        self._stopping = threading.Event()
        self._check_now = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch_read_model, name="read-model-check", daemon=True
        )
        run_projector = settings.run_projector if with_projector is None else with_projector
        self.worker = self._keeper() if run_projector else None
        # Without a projector here or notifications from one, waiters poll the table.
        live = self.worker is not None or self.is_postgres
        self.progress = ProjectionProgress(
            self.projected_position,
            poll_interval=0.1 if live else 0.005,
            on_waited=metrics.waited,
            on_advanced=self._advanced,
        )
        # The position this process's projector reached last (see _advanced).
        self._own_position = 0
        self._listeners: list[PostgresListener] = []

    def start(self) -> None:
        """Start-up: storage and secrets made ready, then the projector and listeners."""
        if not self.is_postgres:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger.create_tables()
        try:
            create_read_tables(self.read_engine, self.version, log_end=self.ledger.last_position())
        except Exception as error:
            # A damaged read file: this process starts without serving it, and the
            # projector's leader sets it aside and rebuilds.
            if not is_unreadable(error):
                raise
            self.read_model_unreadable(error)
        # Before the first request: tables newer than a restored log are never served.
        self.check_read_model()
        self.verifier = build_verifier(self.settings)
        log.info("%s", self.settings.auth_summary())
        if self.is_postgres:
            conninfo = self.settings.storage.conninfo
            self._listeners.append(
                PostgresListener(conninfo, PROJECTION_CHANNEL, self._projected_elsewhere)
            )
            if self.worker is not None:
                # Saves by other processes (API replicas) wake this projector at once.
                channel = self.ledger.recorder.channel_name  # type: ignore[attr-defined]
                self._listeners.append(PostgresListener(conninfo, channel, self.worker.wake))
        for listener in self._listeners:
            listener.start()
        if self.worker is not None:
            self.worker.start()
        if self.health.serving:
            self.progress.refresh()
        self._watcher.start()

    def close(self) -> None:
        self._stopping.set()
        self._check_now.set()
        if self._watcher.ident is not None:
            self._watcher.join(timeout=10)
        if self.worker is not None:
            self.worker.stop()
        for listener in self._listeners:
            listener.stop()
        self.progress.close()
        self.ledger.close()
        self.read_engine.dispose()
        self.query_engine.dispose()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for queries (autocommit: a statement needs no transaction),
        its use timed as the request's query (Server-Timing)."""
        with timed("query"), self.query_engine.connect() as conn:
            yield conn

    def projected_position(self) -> int:
        """How far the served build has got (0 before one is known)."""
        served = self.served
        if served is None:
            return 0
        with self.reading() as conn:
            return read_position(conn, served.projection)

    def require_read_model(self) -> Build:
        """The served build (its ``tables``); raises ReadModelUnavailable while it must
        not be served."""
        if (fault := self.health.fault) is not None:
            raise ReadModelUnavailable(fault)
        served = self.served
        if served is None:
            raise ReadModelUnavailable("no build of the read model is live yet")
        return served

    def now(self) -> datetime:
        """The moment reads judge "overdue" and "today" at: the one clock the routes
        ask, so that a test of the running app can set it."""
        return datetime.now(UTC)

    def judged_now(self) -> datetime:
        """``now`` to the second: what stats and overdue listings are judged at, on
        their routes and on the plain path alike (a past list, at its own moment)."""
        return self.now().replace(microsecond=0)

    def _kept_for(self, moment: datetime | None) -> CachedListings:
        """The cache of answers asked at ``moment``: those judged at one are kept
        apart, so that they never push out the pages asked for again."""
        return self.listings if moment is None else self.moments

    def list_page(self, user_id: str, spec: TaskFilter) -> tuple[str, int]:
        """A page of the user's tasks from the live build (kept while their tasks
        stand still: read_side.runtime.listings)."""
        cache = self._kept_for(spec.now)
        count = self.changes.stable(list_id_of(user_id))  # before the user's position is read
        return self._answered(
            lambda conn, served: cache.page(
                conn,
                served.tables,
                user_id,
                spec,
                build_id=served.id,
                count=count,
                version=served.version,
            )
        )

    async def checked_page(self, user_id: str, spec: TaskFilter) -> tuple[str, int] | None:
        """The page ``list_page`` would answer, when it is kept and the user's position,
        read on the event loop, is still the one it was read at (PostgreSQL; None: ask
        ``list_page``, on a route thread). Exact as ``list_page``: the database is
        asked, only without a thread or SQLAlchemy."""
        return await self.checked_answer(user_id, *filed(spec))

    async def checked_answer(
        self, user_id: str, asked: Hashable, moment: datetime | None = None
    ) -> tuple[str, int] | None:
        """``checked_page`` for any kept answer (a page as ``filed`` files it, or a
        ``summary``'s)."""
        served = self.served
        if self.positions is None or served is None or self.health.fault is not None:
            return None
        with timed("query"):
            found = await self.positions.of(served.tables, user_id)
        if found is None or (found[1] is not None and found[1] != served.id):
            return None  # (a switch made elsewhere is followed by list_page)
        cache = self._kept_for(moment)
        return cache.kept_at(served.tables, user_id, asked, found[0], moment=moment)

    async def aclose(self) -> None:
        """What ``close`` cannot do from outside the event loop."""
        if self.positions is not None:
            await self.positions.close()

    def kept_page(self, user_id: str, spec: TaskFilter) -> tuple[str, int] | None:
        """The page ``list_page`` would answer, from memory alone (``kept_answer``)."""
        return self.kept_answer(user_id, *filed(spec))

    def kept_answer(
        self, user_id: str, asked: Hashable, moment: datetime | None = None
    ) -> tuple[str, int] | None:
        """A kept answer (a page as ``filed`` files it, or a ``summary``'s), from memory
        alone, when it can be told without the database (None: ask the database): it
        is kept, and no batch has been projected since it was read or confirmed, and
        every batch on the served tables is projected here, so that none can be missed.

        The last holds on SQLite with this process's projector leading the served
        build: its leadership is a lock on a file, which no other process can take
        while this one lives. On PostgreSQL it is an advisory lock on a session of its
        own, which a dropped connection ends without the projector knowing until its
        next look; another process may project meanwhile, and a page kept here would be
        answered after a write another process acknowledged. There every listing reads
        the user's position (one indexed lookup)."""
        keeper = self.worker
        # Leading, before the count is read: a worker that takes the lead moves every
        # count before it says it leads, so no page kept before is filed under the count
        # read next (read_side/runtime/worker.py); and the same worker after it.
        if self.is_postgres or keeper is None:
            return None
        leading = keeper.worker
        if leading is None or not leading.is_leader:
            return None
        count = self.changes.stable(list_id_of(user_id))
        served = self.served
        if (
            count is None
            or served is None
            or self.health.fault is not None
            # (On SQLite, a look at the lock file: still the one this process locked.)
            or not keeper.projects_alone(served)
            or keeper.worker is not leading
        ):
            return None
        cache = self._kept_for(moment)
        return cache.kept(served.tables, user_id, asked, count, moment=moment)

    def summary(
        self,
        user_id: str,
        asked: Hashable,
        query: Callable[[Connection, ViewTables], tuple[str, MomentSpan | None]],
        *,
        moment: datetime | None = None,
    ) -> str:
        """A JSON answer about the user's tasks from the live build (their tags, their
        stats), kept like a page while their tasks stand still. ``asked``: what the
        answer depends on besides them; ``moment``: what an answer judged at a moment
        is judged at (``query`` then says the span of moments it holds for)."""
        cache = self._kept_for(moment)
        # Before the user's position is read: see list_page.
        count = self.changes.stable(list_id_of(user_id))

        def answered(conn: Connection, served: Build) -> tuple[str, int]:
            def judged() -> Judged:
                text, span = query(conn, served.tables)
                return (text, 0), span

            return cache.answer(
                conn,
                served.tables,
                user_id,
                asked,
                judged,
                build_id=served.id,
                count=count,
                moment=moment,
            )

        return self._answered(answered)[0]

    def _answered(self, read: Callable[[Connection, Build], tuple[str, int]]) -> tuple[str, int]:
        """``read`` on the live build: should a switch made by another process show in
        its first query, this process follows it at once and reads the new build."""
        for _ in range(3):
            served = self.require_read_model()
            reports = self.health.reports
            try:
                with self.reading() as conn:
                    answer = read(conn, served)
            except BuildSwitched:
                self.check_read_model()
                continue
            if self.health.reports == reports:
                return answer
            # The tables were found wrong while this read them (perhaps from a new,
            # empty read file put in place of a damaged one): read again, or say so.
        raise ReadModelUnavailable("the read model is switching builds")

    def forget_answers(self) -> None:
        """Forget every kept page and answer: the tables they came from were wrong,
        rebuilt, or are no longer the ones served."""
        self.changes.moved()
        self.listings.clear()
        self.moments.clear()

    def read_model_unreadable(self, error: BaseException) -> None:
        """A read of the tables found their storage damaged: stop serving them, and
        let go of connections to the file (a rebuilt one is opened by its path). The
        projector here is told: its own connections may not meet the damage."""
        self._stop_serving(error)
        if self.worker is not None and self._read_file is not None:
            self.worker.damaged(error)

    def _stop_serving(self, error: BaseException) -> None:
        self.health.report(f"the read tables cannot be read ({damage(error)})")
        self.forget_answers()
        self.query_engine.dispose()

    def _setting_aside(self, error: BaseException) -> None:
        # The keeper here sets the damaged file aside next: not served from now on (a
        # check under way finishes first, so that it cannot clear this), until a check
        # sees the new file's rebuild done.
        with self._checking:
            self._stop_serving(error)

    def check_read_model(self, *, for_readiness: bool = False) -> None:
        """Bring this process's view of the read tables up to date with the shared
        check row and the log (every ``read_model_check_seconds``, at start-up, and
        when the projector here starts or ends a rebuild). An outage is left to
        readiness and the requests that meet it.

        ``for_readiness``: /readyz asks. It does not queue behind a check under way
        (that one's finding will do), and an outage raises at once, so that /readyz
        answers 503 after one wait for a connection, not two."""
        if not self._checking.acquire(blocking=not for_readiness):
            return
        try:
            self._follow_read_file()
            try:
                with self.reading() as conn:
                    served = self._follow_live_build(conn)
                    # An older version's build that this code cannot read: its tables
                    # are not this code's to look into (they lack some).
                    tables = None if self._unreadable_build else served.tables
                    found = check_read_model(conn, self.ledger, served.projection, tables)
            except Exception as error:
                if is_unreadable(error):
                    self.read_model_unreadable(error)
                    return
                if for_readiness:
                    raise
                return
            if found.generation != self._generation:
                # From no check row to the one new tables' first batch writes is no
                # rebuild (a reset then could lower a position the projector's news had
                # raised since the read). From no check row to a rebuild's is one.
                first = self._generation == NO_GENERATION and is_first_generation(found.generation)
                if self._generation is not None and not first:
                    # Rebuilt: pages and positions remembered from before are void.
                    self.forget_answers()
                    self.progress.reset(found.position)
                self._generation = found.generation
            fault = self._unreadable_build or found.fault
            if fault is None:
                self.health.recovered()
                return
            self.health.report(fault)
            self.forget_answers()
            if found.fault is not None and not found.rebuilding:
                # Positions read from wrong tables prove nothing about a write.
                self.progress.reset(0)
        finally:
            self._checking.release()

    def readiness(self) -> dict[str, Any]:
        """``status``: "ready"; "degraded" (projection behind beyond the bounds,
        ``reasons``); "stalled" (behind, and applying nothing: writes still work);
        "building" (this code's read model version is not live yet, ``build`` says how
        far it has got); "unavailable" (the read tables must not be served,
        ``reason``). Raises when a database is unreachable (answered 503)."""
        self.check_read_model(for_readiness=True)
        served = self.served
        log_position = self.ledger.last_position()
        unavailable = {"status": "unavailable", "log_position": log_position}
        if served is None:
            reason = self.health.fault or "no build of the read model is live yet"
            return unavailable | {"reason": reason}
        try:
            with self.reading() as conn:
                status = self._status(conn, served, log_position)
                own = self._own_build(conn, served, log_position)
        except Exception:
            # A damaged read file, found so by the check above: say why, not that a
            # database is away.
            if (fault := self.health.fault) is not None:
                return unavailable | {"reason": fault}
            raise
        ready: dict[str, Any] = {
            "status": "ready",
            "log_position": log_position,
            "projected_position": status.position,
            "projection_lag_events": status.lag_events,
            "projection_lag_seconds": round(status.lag_seconds, 3),
            "projection_state": status.state,
            "read_model": status.fields(),
            "projector": self._projector_part(),
        }
        if (fault := self.health.fault) is not None and (own is None or not self._unreadable_build):
            return ready | {"status": "unavailable", "reason": fault}
        if own is not None:
            return ready | {
                "status": "building",
                "reason": (
                    f"this process reads version {self.version} of the read model, "
                    f"which is being built (live: {served.label})"
                ),
                "build": (
                    own.fields()
                    if isinstance(own, BuildStatus)
                    else "not started: no projector of this version runs yet"
                ),
            }
        if status.stalled:
            return ready | {
                "status": "stalled",
                "reason": (
                    f"the projection has applied nothing for "
                    f"{self.settings.projection_stall_seconds:g} s while "
                    f"{status.lag_events} events wait (PROJECTION_STALL_SECONDS); writes "
                    "are still accepted and answer X-Projection-Pending"
                ),
            }
        settings, reasons = self.settings, []
        if status.lag_events > settings.ready_max_lag_events:
            reasons.append(
                f"the projection is {status.lag_events} events behind the log "
                f"(READY_MAX_LAG_EVENTS={settings.ready_max_lag_events})"
            )
        if status.lag_seconds > settings.ready_max_lag_seconds:
            reasons.append(
                f"the projection has not applied an event saved {status.lag_seconds:.1f} s "
                f"ago (READY_MAX_LAG_SECONDS={settings.ready_max_lag_seconds:g})"
            )
        if reasons:
            ready |= {"status": "degraded", "reasons": reasons}
        return ready

    def projection_report(self) -> list[tuple[BuildStatus, str | None]]:
        """Every build of the read model, how it stands, and which process holds its
        projection ("host:pid"; None: no projector holds it)."""
        log_position = self.ledger.last_position()
        with self.reading() as conn:
            statuses = [self._status(conn, build, log_position) for build in catalogue.builds(conn)]
        report: list[tuple[BuildStatus, str | None]] = []
        for status in statuses:
            build = status.build
            holder = None
            if build.state != catalogue.RETIRED:
                lock = (
                    catalogue.builder_lock_name()
                    if build.state == catalogue.BUILDING
                    else build.projection
                )
                holder = leadership_for(self.settings, lock).holder()
                if holder is None and build.state == catalogue.BUILDING:
                    # Its maker was killed: not stalled, left for the next rebuild.
                    report.append((replace(status, state=ABANDONED), None))
                    continue
            report.append((status, holder))
        return report

    def projection_figures(self) -> tuple[dict[str, Any], list[BuildStatus]] | None:
        """For /metrics: readiness's figures, and how every build stands (None when
        the databases cannot be read: the scrape shows this process's figures alone)."""
        try:
            ready = self.readiness()
            with self.reading() as conn:
                statuses = [
                    self._status(conn, build, ready["log_position"])
                    for build in catalogue.builds(conn)
                ]
        except Exception as error:
            log.warning("metrics without positions: %s", type(error).__name__)
            return None
        return ready, statuses

    # ------------------------------------------------------------------------

    def _watch_read_model(self) -> None:
        while not self._stopping.is_set():
            # Woken early by a switch announced on the projection channel.
            self._check_now.wait(self.settings.read_model_check_seconds)
            self._check_now.clear()
            if self._stopping.is_set():
                return
            try:
                self.check_read_model()
            except Exception as error:
                log.warning("checking the read tables failed (%s)", type(error).__name__)

    def _follow_read_file(self) -> None:
        # The projector's leader (perhaps another process) set a damaged SQLite file
        # aside: pooled connections still read the old one.
        if self._read_file is None:
            return
        identity = file_identity(self._read_file)
        if identity != self._read_file_identity:
            self._read_file_identity = identity
            self.query_engine.dispose()
            if self.worker is None:
                self.read_engine.dispose()

    def _follow_live_build(self, conn: Connection) -> Build:
        """The live build, as the catalogue has it now: a switch (a rebuild, a new
        version made live) is followed here, within a check interval."""
        live = catalogue.live_build(conn)
        if live is None:
            raise ReadModelUnavailable("no build of the read model is live yet")
        if live != self.served:
            self._unreadable_build = self._why_unreadable(conn, live)
            # Served first, so that its projector's news counts from here on; then its
            # position, which the switch made at least the old build's (and the old
            # build is fenced: no write acknowledged from it lies beyond).
            previous, self.served = self.served, live
            self.forget_answers()
            self.progress.reset(read_position(conn, live.projection))
            self._generation = None
            if previous is not None or live.version != self.version:
                log.warning(
                    "serving read model %s%s",
                    live.label,
                    f" ({self._unreadable_build})" if self._unreadable_build else "",
                )
        return live

    def _why_unreadable(self, conn: Connection, build: Build) -> str | None:
        """Why this code cannot read ``build`` (None: it can). Another version's tables
        are read when they have every column this code reads (an older process
        following a newer build, or the reverse, while the rolling upgrade lasts)."""
        if build.version == self.version:
            return None
        existing = inspect(conn)
        for own, theirs in zip(LIVE_TABLES.all(), build.tables.all(), strict=True):
            present = (
                {column["name"] for column in existing.get_columns(theirs.name)}
                if existing.has_table(theirs.name)
                else set()
            )
            missing = sorted(
                name
                for name in {column.name for column in own.columns} - present
                if versions.reads_column(build.version, own.name, name)
            )
            if missing:
                return (
                    f"the live read model {build.label} lacks columns this code's version "
                    f"{self.version} reads ({', '.join(missing)}); it is served once "
                    f"version {self.version} is built and live"
                )
        return None

    def _status(self, conn: Connection, build: Build, log_position: int) -> BuildStatus:
        return build_status(
            conn,
            self.ledger,
            build,
            log_position=log_position,
            stall_seconds=self.settings.projection_stall_seconds,
        )

    def _own_build(
        self, conn: Connection, served: Build, log_position: int
    ) -> BuildStatus | bool | None:
        """While the live build is older than this code's version: the status of this
        version's build under way (True: none yet). None: this version, or a newer
        one this code can read, is live (an old process still running after the
        switch serves it)."""
        if served.version >= self.version:
            return None
        under_way = catalogue.building_build(conn)
        if under_way is None or under_way.version != self.version:
            return True
        return self._status(conn, under_way, log_position)

    def _projector_part(self) -> str:
        keeper = self.worker
        if keeper is None:
            return "external"
        if keeper.role == "aside":
            return "aside (a newer version is live)"
        part = "active" if keeper.is_leader else "standby"
        return f"{part} (building)" if keeper.role == "building" else part

    def _keeper(self) -> ReadModelKeeper:
        settings = self.settings
        return ReadModelKeeper(
            self.ledger,
            self.read_engine,
            lambda name: leadership_for(settings, name),
            version=self.version,
            batch_size=settings.projector_batch_size,
            build_batch_size=settings.rebuild_batch_size,
            check_interval=settings.read_model_check_seconds,
            retired_grace=retired_grace(settings),
            on_projected=self._projected_by_me,
            on_checked=self.check_read_model,
            on_setting_aside=self._setting_aside,
            watcher=self.changes,
            poll_interval=settings.projector_poll_seconds,
            on_batch=metrics.batched,
        )

    def _saved(self, _position: int) -> None:
        if self.worker is not None:
            self.worker.wake()

    def _projected_by_me(self, projection: str, position: int) -> None:
        served = self.served
        if served is not None and served.projection == projection:
            self._own_position = max(self._own_position, position)
        self._projected_here(projection, position)

    def _advanced(self, position: int) -> None:
        # The served tables are further on than this process's projector took them
        # (a rebuild's last rounds, another leader): pages kept under the change count
        # may lack what that projector applied. Told before any write waiting for the
        # position is answered.
        if position > self._own_position:
            self.changes.moved()

    def _projected_here(self, projection: str, position: int) -> None:
        served = self.served
        if served is not None and served.projection == projection:
            self.progress.advance(position)

    def _projected_elsewhere(self, payload: str) -> None:
        # "<projection> <position>"; a bare position from a release before builds;
        # "switched <build>" when a build is made live.
        projection, _, position = payload.rpartition(" ")
        if projection == catalogue.SWITCHED:
            self._check_now.set()
        elif position.isdigit():
            self._projected_here(projection or DEFAULT_PROJECTION, int(position))
        else:
            # (Re)connected: catch up on whatever was missed meanwhile.
            try:
                self.progress.refresh()
            except Exception as error:
                log.warning("reading the projection position failed: %s", error)


ABANDONED = "abandoned (its builder is gone: the next rebuild drops it)"


def retired_grace(settings: Settings) -> timedelta:
    """How long a retired build outlives its switch: every process must have followed
    (each checks every READ_MODEL_CHECK_SECONDS; set it alike everywhere)."""
    return max(catalogue.RETIRED_GRACE, timedelta(seconds=3 * settings.read_model_check_seconds))


def leadership_for(settings: Settings, name: str = DEFAULT_PROJECTION) -> Leadership:
    """The lock one projector of ``name`` holds while it is the active one."""
    storage = settings.storage
    if storage.kind == "postgres":
        return PostgresLeadership(storage.conninfo, name)
    return FileLeadership(settings.data_dir / f"projector-{name.replace(':', '-')}.lock")


def build_verifier(settings: Settings) -> TokenVerifier:
    endpoint = settings.jwks_endpoint
    jwks = (
        JwksKeys(
            endpoint,
            max_age=settings.jwks_cache_seconds,
            cooldown=settings.jwks_refresh_cooldown_seconds,
            fetch_timeout=settings.jwks_fetch_timeout_seconds,
            max_bytes=settings.jwks_max_bytes,
        )
        if endpoint
        else None
    )
    return TokenVerifier(
        secret=settings.shared_secret(),
        jwks=jwks,
        issuer=settings.issuer,
        audience=settings.audience,
        leeway=settings.jwt_leeway_seconds,
        max_ttl=settings.jwt_max_ttl_seconds,
    )
