"""A PostgreSQL LISTEN loop on its own connection, restarted whenever it drops."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)


class PostgresListener:
    """Calls ``on_notify(payload)`` for each NOTIFY on ``channel``.

    A LISTEN dies with its connection (eventsourcing issue #305), so the loop
    reconnects with a capped back-off, and calls ``on_notify("")`` after each
    (re)connect so that anything sent while it was away is looked for.
    """

    def __init__(self, conninfo: str, channel: str, on_notify: Callable[[str], None]) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.on_notify = on_notify
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"listen-{channel}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    backoff = 0.1
                    self.on_notify("")
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=1.0):
                            self.on_notify(notify.payload)
            except psycopg.Error as error:
                log.warning("listener on %s lost (%s); reconnecting", self.channel, error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
