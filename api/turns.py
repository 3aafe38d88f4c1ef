"""A user's commands take turns on the event loop, not in threads.

The command runner runs one command per user at a time (``write_side.commands``: a
per-user lock). A user with sixteen commands in flight (many tabs, a sync client, a
script) would otherwise hold sixteen threads, all but one of them blocked on that
lock, and every other user's write queued behind them (when commands shared the four
route threads, their listings too: issue 14 measured a small user's list p99 at 13x
its idle figure while one big user wrote). Waiting here instead costs a coroutine:
each user holds at most one thread, and the others stay free for everyone else. The
order is the order of arrival (an asyncio lock wakes its waiters first come, first
served), as the thread lock's was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class UserTurns:
    """A lock per user with commands in flight, dropped with the last of them."""

    def __init__(self) -> None:
        # user id -> (its lock, how many commands hold or await it). Only the event
        # loop touches this: no lock of its own is needed.
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def turn(self, user_id: str) -> AsyncIterator[None]:
        """Held while one of ``user_id``'s commands runs."""
        lock, waiting = self._turns.get(user_id) or (asyncio.Lock(), 0)
        self._turns[user_id] = (lock, waiting + 1)
        try:
            async with lock:
                yield
        finally:
            lock, waiting = self._turns[user_id]
            if waiting == 1:
                del self._turns[user_id]
            else:
                self._turns[user_id] = (lock, waiting - 1)

    def __len__(self) -> int:
        """Users with a command running or waiting."""
        return len(self._turns)
