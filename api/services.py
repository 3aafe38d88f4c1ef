"""Wiring: builds the write side, the read side and the verifier from Settings.

Building creates no table and writes no file (on PostgreSQL it does connect: the event
store's recorders read the database's types): ``start()`` is the one place that creates
the data folder, the tables and the development secret, and starts the threads."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection

from api.auth import JwksKeys, TokenVerifier
from api.read_your_writes import ProjectionProgress
from api.settings import Settings
from infrastructure.leadership import FileLeadership, Leadership, PostgresLeadership
from infrastructure.listener import PostgresListener
from read_side.projector import PROJECTION_CHANNEL, Projector, read_position
from read_side.runtime.engine import create_read_engine, create_read_tables
from read_side.runtime.listings import CachedListings
from read_side.runtime.worker import ProjectorWorker
from read_side.tables import DEFAULT_PROJECTION
from write_side import TaskLedger

log = logging.getLogger(__name__)


class NotStarted(Exception):
    """A request reached the app before its start-up ran (answered 503)."""


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
        create_read_tables(self.read_engine)
        self.verifier = build_verifier(self.settings)
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
        self.progress.refresh()

    def close(self) -> None:
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

    def readiness(self) -> dict[str, Any]:
        """Raises when a database is unreachable (answered 503 by the caller)."""
        log_position = self.ledger.last_position()
        projected = self.projected_position()
        return {
            "status": "ready",
            "log_position": log_position,
            "projected_position": projected,
            "projection_lag_events": max(log_position - projected, 0),
            "projector": (
                "external"
                if self.worker is None
                else ("active" if self.worker.is_leader else "standby")
            ),
        }

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

    def _projector_worker(self) -> ProjectorWorker:
        projector = Projector(
            self.ledger, self.read_engine, batch_size=self.settings.projector_batch_size
        )
        return ProjectorWorker(
            projector,
            leadership_for(self.settings),
            poll_interval=self.settings.projector_poll_seconds,
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
