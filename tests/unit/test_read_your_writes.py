"""Waiting for one's write to be projected costs nothing: waiters share one read of the
position per poll interval, on a thread of its own, never a route thread."""

from __future__ import annotations

import asyncio
import threading
import time

from anyio import to_thread

from api.read_your_writes import ProjectionProgress


class CountedReads:
    def __init__(self) -> None:
        self.reads = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.reads += 1
        time.sleep(0.01)  # a query
        return 0


def test_a_thousand_waiters_share_one_read_per_interval() -> None:
    read = CountedReads()
    progress = ProjectionProgress(read, poll_interval=0.01)

    async def waits() -> list[bool]:
        return await asyncio.gather(*(progress.wait(1, timeout=0.3) for _ in range(1000)))

    try:
        assert asyncio.run(waits()) == [False] * 1000
    finally:
        # Reads already handed to the reader thread count too: on a loaded machine
        # the thread may not have started the first one by the time the waits end.
        progress.close(wait=True)
    # Shared reads run one at a time, so at most 0.3 s / 10 ms of them; one read per
    # waiter per interval would be bounded only by the threads (thousands).
    assert 1 <= read.reads <= 32


def test_waiters_hold_no_route_thread() -> None:
    progress = ProjectionProgress(CountedReads(), poll_interval=0.005)
    borrowed: list[float] = []

    async def waits() -> None:
        route_threads = to_thread.current_default_thread_limiter()
        waiting = [asyncio.ensure_future(progress.wait(1, timeout=0.3)) for _ in range(200)]
        for _ in range(20):
            await asyncio.sleep(0.01)
            borrowed.append(route_threads.borrowed_tokens)
        await asyncio.gather(*waiting)

    try:
        asyncio.run(waits())
    finally:
        progress.close()
    assert max(borrowed) == 0


def test_an_advance_still_wakes_every_waiter_at_once() -> None:
    progress = ProjectionProgress(lambda: 0, poll_interval=10)

    async def waits() -> list[bool]:
        waiting = asyncio.gather(*(progress.wait(5, timeout=5) for _ in range(100)))
        await asyncio.sleep(0.05)
        threading.Thread(target=progress.advance, args=(5,)).start()
        return await waiting

    try:
        # True: woken by the advance (a timed-out wait answers False).
        assert asyncio.run(waits()) == [True] * 100
    finally:
        progress.close()


def test_a_reset_after_the_advance_that_woke_a_waiter_does_not_strand_it() -> None:
    """A check that read the position before the projector's notice resets it lower
    just after that notice woke a write: the write waits on, polling, and finds its
    position at the next poll (it used to spin on its resolved wake-up until its
    deadline, and answer pending)."""
    table = [8]
    progress = ProjectionProgress(lambda: table[0], poll_interval=0.2)
    progress.advance(8)

    async def run() -> tuple[bool, float]:
        started = time.monotonic()
        waiting = asyncio.ensure_future(progress.wait(10, timeout=2.0))
        await asyncio.sleep(0.05)  # registered; its first poll is at 0.2 s
        table[0] = 10
        progress.advance(10)  # the notice: the waiter's wake-up is resolved
        progress.reset(8)  # the check's stale reading, applied after it
        return await waiting, time.monotonic() - started

    try:
        reached, took = asyncio.run(run())
    finally:
        progress.close()
    assert reached
    assert took < 1.0, took
