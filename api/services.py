"""Wiring: builds the write side, the read side and the verifier from Settings.

Building creates no table and writes no file (on PostgreSQL it does connect: the event
store's recorders read the database's types): ``start()`` is the one place that creates
the data folder, the tables and the development secret, and starts the threads."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from api.auth import TokenVerifier
from api.keys import JwksKeys
from api.read_your_writes import ProjectionProgress
from api.settings import Settings
from infrastructure.leadership import FileLeadership, Leadership, PostgresLeadership
from infrastructure.listener import PostgresListener
from read_side.projector import PROJECTION_CHANNEL, Projector, check_read_model, read_position
from read_side.runtime.engine import (
    create_read_engine,
    create_read_tables,
    damage,
    file_identity,
    is_unreadable,
    sqlite_file,
)
from read_side.runtime.health import ReadModelHealth
from read_side.runtime.listings import CachedListings
from read_side.runtime.worker import ProjectorWorker
from read_side.tables import DEFAULT_PROJECTION
from write_side import TaskLedger

log = logging.getLogger(__name__)


class NotStarted(Exception):
    """A request reached the app before its start-up ran (answered 503)."""


class ReadModelUnavailable(Exception):
    """The read tables are wrong, damaged or being rebuilt (answered 503): a listing
    from them would be wrong, not merely late."""


class Services:
    """Everything a running process shares: one per process, built at start-up."""

    def __init__(self, settings: Settings, *, with_projector: bool | None = None) -> None:
        self.settings = settings
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
        )
        # Built at start-up: in development its shared secret may be made then.
        self.verifier: TokenVerifier | None = None
        self.listings = CachedListings(max_bytes=settings.listing_cache_bytes)
        self.health = ReadModelHealth()
        # The rebuild the tables were last seen at (None: not yet looked), and which
        # SQLite file they are in.
        self._generation: str | None = None
        self._read_file = sqlite_file(self.query_engine)
        self._read_file_identity = file_identity(self._read_file) if self._read_file else None
        self._checking = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch_read_model, name="read-model-check", daemon=True
        )
        run_projector = settings.run_projector if with_projector is None else with_projector
        self.worker = self._projector_worker() if run_projector else None
        # Without a projector here or notifications from one, waiters poll the table.
        live = self.worker is not None or self.is_postgres
        self.progress = ProjectionProgress(
            self.projected_position, poll_interval=0.1 if live else 0.005
        )
        if self.worker is not None:
            self.worker.projector.on_projected = self.progress.advance
        self._listeners: list[PostgresListener] = []

    def start(self) -> None:
        """Start-up: storage and secrets made ready, then the projector and listeners."""
        if not self.is_postgres:
            self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger.create_tables()
        try:
            create_read_tables(self.read_engine)
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

    def reading(self) -> Connection:
        """A connection for queries (autocommit: a statement needs no transaction)."""
        return self.query_engine.connect()

    def projected_position(self) -> int:
        with self.reading() as conn:
            return read_position(conn)

    def require_read_model(self) -> None:
        """Raises ReadModelUnavailable while the read tables must not be served."""
        if (fault := self.health.fault) is not None:
            raise ReadModelUnavailable(fault)

    def read_model_unreadable(self, error: BaseException) -> None:
        """A read of the tables found their storage damaged: stop serving them, and
        let go of connections to the file (a rebuilt one is opened by its path)."""
        self.health.report(f"the read tables cannot be read ({damage(error)})")
        self.listings.clear()
        self.query_engine.dispose()

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
                    found = check_read_model(conn, self.ledger)
            except Exception as error:
                if is_unreadable(error):
                    self.read_model_unreadable(error)
                    return
                if for_readiness:
                    raise
                return
            if found.generation != self._generation:
                if self._generation is not None:
                    # Rebuilt: pages and positions remembered from before are void.
                    self.listings.clear()
                    self.progress.reset(found.position)
                self._generation = found.generation
            if found.fault is None:
                self.health.recovered()
                return
            self.health.report(found.fault)
            self.listings.clear()
            if not found.rebuilding:
                # Positions read from wrong tables prove nothing about a write.
                self.progress.reset(0)
        finally:
            self._checking.release()

    def readiness(self) -> dict[str, Any]:
        """``status``: "ready"; "degraded" (projection behind or stalled beyond the
        bounds, ``reasons``); "unavailable" (the read tables must not be served,
        ``reason``). Raises when a database is unreachable (answered 503)."""
        self.check_read_model(for_readiness=True)
        log_position = self.ledger.last_position()
        projected = self.projected_position()
        lag_events = max(log_position - projected, 0)
        lag_seconds = self._oldest_unprojected_age(projected) if lag_events else 0.0
        ready: dict[str, Any] = {
            "status": "ready",
            "log_position": log_position,
            "projected_position": projected,
            "projection_lag_events": lag_events,
            "projection_lag_seconds": round(lag_seconds, 3),
            "projector": (
                "external"
                if self.worker is None
                else ("active" if self.worker.is_leader else "standby")
            ),
        }
        if (fault := self.health.fault) is not None:
            return ready | {"status": "unavailable", "reason": fault}
        settings, reasons = self.settings, []
        if lag_events > settings.ready_max_lag_events:
            reasons.append(
                f"the projection is {lag_events} events behind the log "
                f"(READY_MAX_LAG_EVENTS={settings.ready_max_lag_events})"
            )
        if lag_seconds > settings.ready_max_lag_seconds:
            reasons.append(
                f"the projection has not applied an event saved {lag_seconds:.1f} s ago "
                f"(READY_MAX_LAG_SECONDS={settings.ready_max_lag_seconds:g})"
            )
        if reasons:
            ready |= {"status": "degraded", "reasons": reasons}
        return ready

    def metrics(self) -> str:
        """This process's figures in Prometheus' text format."""
        counters = {
            name: self.ledger.counts[name]
            for name in ("commands_saved", "conflicts_retried", "idempotent_replays")
        }
        counters["save_transactions"] = self.ledger.save_transactions
        lines = []
        for name, value in counters.items():
            lines += [f"# TYPE taskledger_{name}_total counter", f"taskledger_{name}_total {value}"]
        try:
            ready = self.readiness()
        except Exception as error:
            log.warning("metrics without positions: %s", type(error).__name__)
        else:
            for name in ("log_position", "projected_position", "projection_lag_events"):
                lines += [f"# TYPE taskledger_{name} gauge", f"taskledger_{name} {ready[name]}"]
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------------

    def _watch_read_model(self) -> None:
        while not self._stopping.wait(self.settings.read_model_check_seconds):
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

    def _oldest_unprojected_age(self, projected: int) -> float:
        """Seconds since the first event the read tables lack was saved."""
        found = self.ledger.recorder.select_notifications(
            start=projected, limit=1, inclusive_of_start=False
        )
        if not found:
            return 0.0
        saved_at = getattr(self.ledger.mapper.to_domain_event(found[0]), "timestamp", None)
        if not isinstance(saved_at, datetime):
            return 0.0
        return max((datetime.now(UTC) - saved_at).total_seconds(), 0.0)

    def _projector_worker(self) -> ProjectorWorker:
        projector = Projector(
            self.ledger, self.read_engine, batch_size=self.settings.projector_batch_size
        )
        return ProjectorWorker(
            projector,
            leadership_for(self.settings),
            poll_interval=self.settings.projector_poll_seconds,
            check_interval=self.settings.read_model_check_seconds,
            on_checked=self.check_read_model,
        )

    def _saved(self, _position: int) -> None:
        if self.worker is not None:
            self.worker.wake()

    def _projected_elsewhere(self, payload: str) -> None:
        if payload.isdigit():
            self.progress.advance(int(payload))
        else:
            # (Re)connected: catch up on whatever was missed meanwhile.
            try:
                self.progress.refresh()
            except Exception as error:
                log.warning("reading the projection position failed: %s", error)


def leadership_for(settings: Settings) -> Leadership:
    storage = settings.storage
    if storage.kind == "postgres":
        return PostgresLeadership(storage.conninfo, DEFAULT_PROJECTION)
    return FileLeadership(settings.data_dir / f"projector-{DEFAULT_PROJECTION}.lock")


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
