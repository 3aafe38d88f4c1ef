"""Keeping this code's version of the read model, in every process that projects.

The catalogue (``read_side.catalogue``) says which build is live. Against it, this
code's version (``read_side.versions``) decides the keeper's part:

- the live build is this version: project it (one active worker across all
  processes, on the build's own leadership; the others stand by);
- the live build is older (a rolling upgrade has begun): build this version beside
  it, holding the builder's lock so that only one process builds, and switch to it
  once it has caught up; the old processes serve and project the old build meanwhile;
- the live build is newer (this process is an old one, still running): stand aside.
  Its own processes project it; this one's readers may still serve it.

The part is looked at again every ``check_interval`` and whenever a worker ends, so
that a switch made elsewhere (``taskledger projections rebuild``) is followed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from sqlalchemy import Engine

from infrastructure.leadership import Leadership
from read_side import catalogue
from read_side.catalogue import Build
from read_side.projector import BatchWatcher, check_read_model, read_position
from read_side.runtime.engine import create_read_tables, damage, is_unreadable, set_aside
from read_side.runtime.worker import ProjectorWorker

log = logging.getLogger(__name__)

LIVE, BUILDING, ASIDE = "live", "building", "aside"


@dataclass(frozen=True)
class Part:
    role: str
    # The build worked on (None: standing aside, or waiting for the builder's lock).
    build: Build | None = None


class ReadModelKeeper:
    def __init__(
        self,
        ledger: Application[UUID],
        engine: Engine,
        leadership: Callable[[str], Leadership],
        *,
        version: int,
        batch_size: int = 500,
        build_batch_size: int = 10_000,
        check_interval: float = 1.0,
        retired_grace: timedelta = catalogue.RETIRED_GRACE,
        on_projected: Callable[[str, int], None] | None = None,
        on_checked: Callable[[], None] | None = None,
        on_setting_aside: Callable[[BaseException], None] | None = None,
        watcher: BatchWatcher | None = None,
        **worker_options: Any,
    ) -> None:
        self.ledger, self.engine, self.version = ledger, engine, version
        self._leadership = leadership
        # Events per transaction while projecting the live build, and while building
        # one from the start of the log (larger: nobody reads it yet).
        self.batch_size, self.build_batch_size = batch_size, build_batch_size
        self.check_interval = check_interval
        self.retired_grace = retired_grace
        self.on_projected = on_projected
        self.on_checked = on_checked
        # Told before a damaged read file is set aside: this process stops serving it
        # then, before the new, empty file can be opened in its place.
        self.on_setting_aside = on_setting_aside
        # Damage a reader in this process met (see ``damaged``).
        self._damage: BaseException | None = None
        # Told of every batch this process projects, whichever build it is for.
        self.watcher = watcher
        self._worker_options = worker_options
        self.part: Part | None = None
        self.worker: ProjectorWorker | None = None
        self._builder: Leadership | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="read-model-keeper", daemon=True)

    @property
    def is_leader(self) -> bool:
        worker = self.worker
        return worker is not None and worker.is_leader

    def projects_alone(self, build: Build) -> bool:
        """Whether this process projects ``build`` now, as the holder of its leadership:
        then no batch lands on its tables but through this process, while the lock
        holds."""
        part, worker = self.part, self.worker
        return (
            part is not None
            and part.role == LIVE
            and part.build == build
            and worker is not None
            and worker.is_leader
            and worker.running
            and worker.leadership.holds()
        )

    @property
    def role(self) -> str | None:
        part = self.part
        return part.role if part is not None else None

    def wake(self, *_: object) -> None:
        if (worker := self.worker) is not None:
            worker.wake()

    def damaged(self, error: BaseException) -> None:
        """A reader in this process found the read file damaged: set it aside and
        rebuild, even when this keeper's own connections still read it (SQLite keeps
        the pages a connection read while the WAL does not change)."""
        self._damage = error
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=15)
        self._end_worker()

    # ------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                told, self._damage = self._damage, None
                if told is not None:
                    self._replace_damaged(told)
                self._follow()
            except Exception as error:
                if is_unreadable(error):
                    self._replace_damaged(error)
                else:
                    log.warning(
                        "keeping the read model failed (%s); retrying", type(error).__name__
                    )
            self._wake.wait(self.check_interval)
            self._wake.clear()

    def _follow(self) -> None:
        part = self._part()
        worker = self.worker
        if part == self.part and worker is not None and worker.running:
            return
        if part.role == BUILDING and part.build is None:
            # Waiting for the builder's lock: whoever holds it builds.
            self._end_worker()
            self.part = part
            return
        self._end_worker()
        self.part = part
        if part.build is None:
            return
        if part.role == BUILDING and self._builder is not None:
            leadership, after_round = self._builder, self._switch_when_caught_up(part.build)
            batch_size, replaying = self.build_batch_size, True
        else:
            leadership = self._leadership(part.build.projection)
            after_round, batch_size = self._drop_retired_builds(), self.batch_size
            replaying = False
        self.worker = self._worker_for(part.build, leadership, after_round, batch_size, replaying)
        self.worker.start()

    def _part(self) -> Part:
        with self.engine.connect() as conn:
            live = catalogue.live_build(conn)
        if live is None:
            log_end = int(self.ledger.recorder.max_notification_id() or 0)
            live = create_read_tables(self.engine, self.version, log_end=log_end)
        if live.version == self.version:
            self._let_go_of_builder()
            return Part(LIVE, live)
        if live.version > self.version:
            self._let_go_of_builder()
            if self.part is None or self.part.role != ASIDE:
                log.warning(
                    "read model %s is live, newer than this code's version %d: this "
                    "process does not project it",
                    live.label,
                    self.version,
                )
            return Part(ASIDE)
        return Part(BUILDING, self._build_to_make())

    def _build_to_make(self) -> Build | None:
        """This version's build under way, once this process holds the builder's
        lock (None: another process holds it)."""
        if self._builder is None:
            builder = self._leadership(catalogue.builder_lock_name())
            if not builder.acquire():
                builder.release()
                return None
            self._builder = builder
        elif not self._builder.holds():
            self._let_go_of_builder()
            return None
        if self.part is not None and self.part.role == BUILDING and self.part.build is not None:
            return self.part.build
        with self.engine.begin() as conn:
            under_way = catalogue.building_build(conn)
        if under_way is not None and under_way.version == self.version:
            log.warning("read model %s: carrying on with its build", under_way.label)
            return under_way
        if under_way is not None:
            # Another version's build, abandoned (its builder let go of the lock).
            catalogue.drop(self.engine, under_way)
        with self.engine.begin() as conn:
            build = catalogue.start_build(conn, self.version)
        log.warning(
            "read model version %d is not built: building %s beside the live one",
            self.version,
            build.label,
        )
        return build

    def _worker_for(
        self,
        build: Build,
        leadership: Leadership,
        after_round: Callable[[], None],
        batch_size: int,
        replaying: bool,
    ) -> ProjectorWorker:
        projector = catalogue.projector(
            build,
            self.ledger,
            self.engine,
            batch_size=batch_size,
            replaying=replaying,
            on_projected=self._projected(build),
            watcher=self.watcher,
        )
        return ProjectorWorker(
            projector,
            leadership,
            check_interval=self.check_interval,
            on_checked=self.on_checked,
            after_round=after_round,
            version=self.version,
            **self._worker_options,
        )

    def _projected(self, build: Build) -> Callable[[int], None] | None:
        on_projected = self.on_projected
        if on_projected is None:
            return None
        return lambda position: on_projected(build.projection, position)

    def _switch_when_caught_up(self, build: Build) -> Callable[[], None]:
        def after_round() -> None:
            log_end = int(self.ledger.recorder.max_notification_id() or 0)
            with self.engine.connect() as conn:
                position = read_position(conn, build.projection)
            if log_end - position > self.batch_size:
                return
            with self.engine.begin() as conn:
                switched = catalogue.switch(conn, build)
            if switched:
                log.warning(
                    "read model %s is live (switched at position %d)", build.label, position
                )
                if self.on_checked is not None:
                    self.on_checked()
                # The keeper takes this build's part as the live one.
                self._wake.set()

        return after_round

    def _drop_retired_builds(self) -> Callable[[], None]:
        last = [0.0]

        def after_round() -> None:
            if time.monotonic() - last[0] < self.check_interval:
                return
            last[0] = time.monotonic()
            catalogue.drop_retired(
                self.engine,
                grace=self.retired_grace,
                projected=lambda build: self._leadership(build.projection).holder() is not None,
            )

        return after_round

    def _replace_damaged(self, error: BaseException) -> None:
        """The read tables' storage cannot even tell which build is live (a damaged
        SQLite file): one process sets the file aside and starts a new one, marked
        as a rebuild, which the keepers then project from the log."""
        repair = self._leadership(f"{catalogue.builder_lock_name()}:repair")
        if not repair.acquire():
            repair.release()
            return
        try:
            self._end_worker()
            # Fresh connections: pooled ones may still hold the damaged pages as they
            # were before.
            self.engine.dispose()
            try:
                with self.engine.connect() as conn:
                    live = catalogue.live_build(conn)
                    if live is not None:
                        # Read as a check reads them (a row of each table): the damage
                        # a reader met may be in any of them.
                        tables = live.tables if live.version == self.version else None
                        check_read_model(conn, self.ledger, live.projection, tables)
                return  # Another process has replaced it already.
            except Exception as again:
                if not is_unreadable(again):
                    raise
            fault = f"the read tables cannot be read ({damage(error)})"
            if self.on_setting_aside is not None:
                self.on_setting_aside(error)
            kept = set_aside(self.engine)
            if kept is None:
                return
            create_read_tables(self.engine, self.version, rebuilding=fault)
            log.error(
                "read model: %s; rebuilding it from the log (the damaged file is kept as %s)",
                fault,
                kept,
            )
            self.part = None
            if self.on_checked is not None:
                self.on_checked()
            self._wake.set()
        finally:
            repair.release()

    def _end_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.stop()

    def _let_go_of_builder(self) -> None:
        builder, self._builder = self._builder, None
        if builder is not None:
            builder.release()
