"""How far the projection has got, and waiting for it: read-your-writes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

# A writer waiting on an event loop: (position, its loop, its future).
_Waiter = tuple[int, asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class ProjectionProgress:
    """The highest log position known to be in the read tables.

    ``advance`` is called by whoever learns of progress: the in-process projector
    after each commit, or a listener on the projector's notifications. When no such
    source exists (a separate projector on SQLite), waiters poll ``read_position``.
    """

    def __init__(
        self,
        read_position: Callable[[], int],
        *,
        poll_interval: float = 0.005,
        on_waited: Callable[[float, bool], None] | None = None,
        on_advanced: Callable[[int], None] | None = None,
    ) -> None:
        self._read_position = read_position
        self._poll_interval = poll_interval
        # Told each wait's seconds and whether the position was reached (metrics).
        self._on_waited = on_waited
        # Told each new position before the waiters it releases are woken.
        self._on_advanced = on_advanced
        self._position = 0
        self._lock = threading.Lock()
        self._waiters: list[_Waiter] = []
        # The read of the position under way, per event loop, that waiters share.
        self._reading: dict[asyncio.AbstractEventLoop, asyncio.Future[int]] = {}
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="position-reader")

    @property
    def position(self) -> int:
        return self._position

    def advance(self, position: int) -> None:
        with self._lock:
            if position <= self._position:
                return
            self._position = position
            if self._on_advanced is not None:
                self._on_advanced(position)
            reached = [waiter for waiter in self._waiters if waiter[0] <= position]
            self._waiters = [waiter for waiter in self._waiters if waiter[0] > position]
        for _, loop, future in reached:
            # advance() runs in the projector's or a listener's thread.
            loop.call_soon_threadsafe(_resolve, future)

    def reset(self, position: int) -> None:
        """The read tables were found wrong or rebuilt: the position is what they
        hold now, even if lower than before (waiters beyond it wait on)."""
        with self._lock:
            lower = position < self._position
            if lower:
                self._position = position
        if not lower:
            self.advance(position)

    def refresh(self) -> int:
        self.advance(self._read_position())
        return self._position

    async def wait(self, position: int, timeout: float) -> bool:
        """Wait until the read tables include ``position``; False on timeout.

        Waiters sleep until ``advance`` wakes them, holding no thread; the table itself
        is read only when a poll interval passes without news (the only way, with no
        live source).
        """
        started = time.perf_counter()
        reached = await self._wait(position, timeout)
        if self._on_waited is not None:
            self._on_waited(time.perf_counter() - started, reached)
        return reached

    async def _wait(self, position: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        waiter = self._register(position, loop)
        if waiter is None:
            return True
        future = waiter[2]
        deadline = loop.time() + timeout
        try:
            while self._position < position:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                if future.done():
                    # Woken by an advance that a reset lowered again since (a check
                    # that read the position before the advance): wait anew, polling,
                    # instead of spinning on the resolved future until the deadline.
                    renewed = self._register(position, loop)
                    if renewed is None:
                        return True
                    waiter = renewed
                    future = waiter[2]
                try:
                    await asyncio.wait_for(
                        asyncio.shield(future), min(remaining, self._poll_interval)
                    )
                except TimeoutError:
                    try:
                        await asyncio.wait_for(
                            self._shared_refresh(loop), max(deadline - loop.time(), 0)
                        )
                    except TimeoutError:
                        # This write's own deadline came while the shared read was
                        # under way (the loop answers it pending); the read goes on
                        # for the others. Not a failure of the read: not logged.
                        continue
                    except Exception as error:
                        # The read tables are unreachable (the database is restarting).
                        # The write is durable already: wait on, and at worst answer
                        # it as pending, never as an error a client would retry into
                        # a duplicate.
                        log.info(
                            "reading the projection position failed (%s)", type(error).__name__
                        )
            return True
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _register(self, position: int, loop: asyncio.AbstractEventLoop) -> _Waiter | None:
        """A waiter for ``position`` that ``advance`` will wake; None if reached."""
        waiter = (position, loop, loop.create_future())
        with self._lock:
            if self._position >= position:
                return None
            self._waiters.append(waiter)
        return waiter

    async def _shared_refresh(self, loop: asyncio.AbstractEventLoop) -> None:
        """One read of the position for all the waiters whose poll interval passed,
        on a thread of its own: a thousand waiters cost one query per interval, and no
        route thread (those serve other users' requests)."""
        with self._lock:
            reading = self._reading.get(loop)
            if reading is None or reading.done():
                reading = self._reading[loop] = loop.run_in_executor(self._reader, self.refresh)
        await asyncio.shield(reading)

    def close(self, *, wait: bool = False) -> None:
        self._reader.shutdown(wait=wait)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
