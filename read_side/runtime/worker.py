"""Running a projector for real: one active worker per projection, standbys waiting.

When the active worker dies, a standby takes its leadership (infrastructure.leadership)
and carries on from the committed position. (The position row lock keeps the
projection exactly-once even without leadership; leadership only saves the standbys
from doing the work twice.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from infrastructure.leadership import Leadership
from read_side.projector import ProjectionFenced, Projector, ReadModelFault
from read_side.runtime.engine import create_read_tables, damage, is_unreadable, set_aside
from read_side.versions import READ_MODEL_VERSION

log = logging.getLogger(__name__)


class ProjectorWorker:
    """Runs ``projector`` in a thread while it holds ``leadership``.

    ``wake()`` is called by whoever knows of new events (a save in this process, a
    NOTIFY from the event store); ``poll_interval`` is only the safety net. SQLite has
    no NOTIFY: a projector in its own process would learn of another process's saves
    only by that poll, so there the worker also watches the log's end, every
    ``watch_interval`` (a cheap read of the events file), and every ``busy_interval``
    for ``busy_seconds`` after a batch: while writes come, the watch's wait is most
    of the projection's lag (half the interval on average), and an idle projector
    still reads the file only a hundred times a second. (bench/lag.py at 500 writes/s,
    against 10 ms throughout: lag p50 8 → 3.7 ms, p99 21 → 11 ms; the projector's CPU
    0.40 → 0.61 ms a write, in smaller batches; 1 ms: 2.2 ms, 10 ms, 0.81 ms.)
    """

    def __init__(
        self,
        projector: Projector,
        leadership: Leadership,
        *,
        poll_interval: float = 1.0,
        standby_interval: float = 1.0,
        watch_interval: float | None = None,
        busy_interval: float = 0.003,
        busy_seconds: float = 1.0,
        check_interval: float = 1.0,
        on_checked: Callable[[], None] | None = None,
        after_round: Callable[[], None] | None = None,
        on_batch: Callable[[str, int, float], None] | None = None,
        version: int = READ_MODEL_VERSION,
    ) -> None:
        self.projector = projector
        self.leadership = leadership
        self.poll_interval = poll_interval
        self.standby_interval = standby_interval
        if watch_interval is None and projector.engine.dialect.name == "sqlite":
            watch_interval = 0.01
        self.watch_interval = watch_interval
        self.busy_interval, self.busy_seconds = busy_interval, busy_seconds
        # Until when the log is watched every busy_interval (monotonic seconds).
        self._busy_until = -float("inf")
        self.check_interval = check_interval
        # Told when a rebuild starts or ends, so that this process's view follows at once.
        self.on_checked = on_checked
        # Run after each round that caught up (a build's switch, dropping retired ones).
        self.after_round = after_round
        # Told each batch applied: the projection, its events and seconds.
        self.on_batch = on_batch
        # The read model version this code builds (a damaged file is made again as it).
        self.version = version
        self.is_leader = False
        self._rebuilding = False
        self._applied = _Applied(projector, self._log_end)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="projector", daemon=True)

    def wake(self, *_: object) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        """False once stopped, or once its build is no longer in the tables."""
        return self._thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10)

    def run(self) -> None:
        while not self._stop.is_set():
            if not self.leadership.acquire():
                self._stop.wait(self.standby_interval)
                continue
            # Until now another process may have projected: pages this one kept meanwhile
            # are told apart from the tables before anyone can see it leads.
            if self.projector.watcher is not None:
                self.projector.watcher.moved()
            self.is_leader = True
            log.info("projector %s: active", self.projector.name, extra=_about(self.projector.name))
            try:
                self._lead()
            finally:
                self.is_leader = False
                self.leadership.release()

    def _lead(self) -> None:
        checked_at = -float("inf")
        failing: _Failures | None = None
        while not self._stop.is_set():
            # Clear before reading, so that a wake during the round is not lost.
            self._wake.clear()
            try:
                if failing is not None or time.monotonic() - checked_at >= self.check_interval:
                    self._keep_correct()
                    checked_at = time.monotonic()
                # Everything up to here is applied when catch_up returns.
                seen = self._log_end() if self.watch_interval else 0
                self._catch_up()
                if self._rebuilding:
                    self._finish_rebuild()
                if self.after_round is not None:
                    self.after_round()
            except ProjectionFenced as gone:
                log.warning(
                    "projector %s: %s; this worker ends",
                    self.projector.name,
                    gone,
                    extra=_about(self.projector.name),
                )
                self._stop.set()
                return
            except Exception as error:
                # The database may be away. The next round starts again from the
                # committed position, so nothing is lost or applied twice; it checks
                # the tables first, in case they are what fails.
                failing = failing or _Failures()
                failing.record(error, self.projector)
                self._stop.wait(0.5)
                if not self.leadership.holds():
                    return
                continue
            if failing is not None:
                failing.over()
                failing = None
            if not self._wait_for_events(seen) and not self.leadership.holds():
                log.warning(
                    "projector %s: lost leadership",
                    self.projector.name,
                    extra=_about(self.projector.name),
                )
                return

    def _keep_correct(self) -> None:
        try:
            found = self.projector.check()
        except Exception as error:
            if not is_unreadable(error):
                raise
            self._rebuild(f"the read tables cannot be read ({damage(error)})", unreadable=True)
            return
        # A rebuild a previous leader began is carried on from its position.
        self._rebuilding = found.rebuilding
        if found.fault is not None and not found.rebuilding:
            self._rebuild(found.fault)

    def _catch_up(self) -> None:
        try:
            self.projector.catch_up(on_batch=self._batched)
        except ReadModelFault as error:
            # The log changed under the tables since the last check (an event store
            # restored and written to again): nothing of it was applied, and the
            # tables are rebuilt at once, without waiting for the next check.
            self._rebuild(error.fault)
            self.projector.catch_up(on_batch=self._batched)

    def _batched(self, events: int, seconds: float) -> None:
        self._busy_until = time.monotonic() + self.busy_seconds
        self._applied.batch(events)
        if self.on_batch is not None:
            self.on_batch(self.projector.name, events, seconds)

    def _rebuild(self, fault: str, *, unreadable: bool = False) -> None:
        engine, name = self.projector.engine, self.projector.name
        # A damaged SQLite file is kept for forensics, and a new one made; elsewhere
        # the tables are dropped and made again.
        kept = set_aside(engine) if unreadable else None
        if kept is not None:
            live = create_read_tables(engine, self.version, rebuilding=fault)
            if live.projection != name:
                # The new file starts with a build of its own: whoever keeps the read
                # model (read_side.runtime.keeper) projects that one.
                self._checked()
                raise ProjectionFenced(f"the damaged file was set aside (kept as {kept})")
        self.projector.reset(fault)
        log.error(
            "projection %s: %s; rebuilding it from the log%s",
            name,
            fault,
            f" (the damaged file is kept as {kept})" if kept else "",
            extra=_about(name),
        )
        self._rebuilding = True
        self._checked()

    def _finish_rebuild(self) -> None:
        self.projector.finish_rebuild()
        self._rebuilding = False
        position = self.projector.position()
        log.warning(
            "projection %s: rebuilt from the log up to position %d",
            self.projector.name,
            position,
            extra=_about(self.projector.name, position=position),
        )
        self._checked()

    def _checked(self) -> None:
        if self.on_checked is not None:
            self.on_checked()

    def _log_end(self) -> int:
        return int(self.projector.ledger.recorder.max_notification_id() or 0)

    def _wait_for_events(self, seen: int) -> bool:
        """Wait for a wake, or for the log to grow past ``seen``; False when
        ``poll_interval`` passed with neither."""
        if not self.watch_interval:
            return self._wake.wait(self.poll_interval)
        deadline = time.monotonic() + self.poll_interval
        while (remaining := deadline - time.monotonic()) > 0:
            busy = time.monotonic() < self._busy_until
            interval = min(self.watch_interval, self.busy_interval) if busy else self.watch_interval
            if self._wake.wait(min(interval, remaining)):
                return True
            try:
                if self._log_end() > seen:
                    return True
            except Exception as error:
                log.warning("watching the log failed (%s)", type(error).__name__)
                return False
        return False


def _about(projection: str, **fields: object) -> dict[str, object]:
    """A projector line's ``extra``: fields of their own in JSON logs."""
    return {"projection": projection, **fields}


def _committed(projector: Projector) -> int | None:
    """The projection's committed position, if the read tables answer."""
    try:
        return projector.position()
    except Exception:
        return None


# Seconds between two lines saying how the projection is getting on.
_REPORT_SECONDS = 60.0


class _Applied:
    """The batches applied, told at the first and then at most once a minute: how
    many, the position reached and the events still to apply (two reads, per line)."""

    def __init__(self, projector: Projector, log_end: Callable[[], int]) -> None:
        self.projector, self.log_end = projector, log_end
        self.events = self.batches = 0
        self._logged_at = -float("inf")

    def batch(self, events: int) -> None:
        self.events += events
        self.batches += 1
        if time.monotonic() - self._logged_at < _REPORT_SECONDS:
            return
        self._logged_at = time.monotonic()
        try:
            position = self.projector.position()
            lag = max(self.log_end() - position, 0)
        except Exception:
            return  # a line of figures is not worth failing the round for
        log.info(
            "projector %s: %d events applied in %d batches; at position %d, %d behind the log",
            self.projector.name,
            self.events,
            self.batches,
            position,
            lag,
            extra=_about(
                self.projector.name,
                events=self.events,
                batches=self.batches,
                position=position,
                lag_events=lag,
            ),
        )
        self.events = self.batches = 0


class _Failures:
    """A run of failed rounds, logged as it starts, at most once a minute while it
    lasts, and as it ends: not once per retry."""

    def __init__(self) -> None:
        self.count = 0
        self._logged_at = -float("inf")

    def record(self, error: Exception, projector: Projector) -> None:
        self.count += 1
        if time.monotonic() - self._logged_at >= 60:
            self._logged_at = time.monotonic()
            # The round fails at the event after the committed position (or at the
            # check before it): nothing after that position is applied.
            position = _committed(projector)
            log.warning(
                "projection round failed (%s, %d in a row) after position %s; retrying every 0.5 s",
                type(error).__name__,
                self.count,
                position,
                extra=_about(projector.name, position=position, error=type(error).__name__),
            )

    def over(self) -> None:
        log.warning("projection rounds succeed again after %d failures", self.count)
