"""A user's commands take turns on the event loop (api/turns.py): however many of one
user's writes are in flight, they hold one thread, and other users' commands still run
beside them, in threads of their own (COMMAND_THREADS), many to a group commit."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.turns import UserTurns
from tests.support import User, in_threads, make_settings, services_of, serving


class Occupancy:
    """Wraps a ledger command: how many calls of each user ran at once in threads,
    at most (each call lingers a little, so that overlaps would be seen)."""

    def __init__(self, command: Callable[..., Any], linger: float) -> None:
        self.command = command
        self.linger = linger
        self.running: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.overall = 0
        self.most_overall = 0
        self.lock = threading.Lock()

    def __call__(self, user_id: str, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.running[user_id] += 1
            self.overall += 1
            self.most[user_id] = max(self.most[user_id], self.running[user_id])
            self.most_overall = max(self.most_overall, self.overall)
        try:
            time.sleep(self.linger)
            return self.command(user_id, *args, **kwargs)
        finally:
            with self.lock:
                self.running[user_id] -= 1
                self.overall -= 1


@pytest.fixture
def occupancy(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[Occupancy]:
    ledger = services_of(client).ledger
    watched = Occupancy(ledger.add_task, linger=0.05)
    monkeypatch.setattr(ledger, "add_task", watched)
    yield watched


def test_one_users_many_writes_hold_one_route_thread(
    client: TestClient, occupancy: Occupancy, user: User
) -> None:
    answers = in_threads(
        12, lambda i: client.post(user.tasks_url(), json={"title": f"t{i}"}, headers=user.headers)
    )
    assert [answer.status_code for answer in answers] == [201] * 12
    # Without turns, four route threads would hold four of them at once, three only
    # waiting for the command runner's lock on the user.
    assert occupancy.most[user.id] == 1
    assert len(services_of(client).turns) == 0
    listed = client.get(user.tasks_url(), headers=user.headers).json()
    assert sorted(task["title"] for task in listed) == sorted(f"t{i}" for i in range(12))


def test_other_users_writes_run_beside_them(client: TestClient, occupancy: Occupancy) -> None:
    users = [User() for _ in range(3)]

    def write(i: int) -> int:
        writer = users[i % len(users)]
        answer = client.post(writer.tasks_url(), json={"title": "x"}, headers=writer.headers)
        return int(answer.status_code)

    assert in_threads(9, write) == [201] * 9
    assert all(occupancy.most[writer.id] == 1 for writer in users)
    # One thread per user at a time, and the users' turns in parallel.
    assert occupancy.most_overall >= 2


def test_a_turn_is_given_back_when_its_command_fails() -> None:
    turns = UserTurns()
    order: list[str] = []

    async def failing() -> None:
        async with turns.turn("u"):
            order.append("failing")
            await asyncio.sleep(0.01)
            raise RuntimeError("refused")

    async def next_one() -> None:
        async with turns.turn("u"):
            order.append("next")

    async def both() -> list[BaseException | None]:
        return list(await asyncio.gather(failing(), next_one(), return_exceptions=True))

    first, second = asyncio.run(both())
    assert isinstance(first, RuntimeError) and second is None
    assert order == ["failing", "next"]
    assert len(turns) == 0


def test_a_cancelled_wait_gives_its_place_up() -> None:
    turns = UserTurns()

    async def scenario() -> list[str]:
        done: list[str] = []
        release = asyncio.Event()

        async def holder() -> None:
            async with turns.turn("u"):
                await release.wait()
                done.append("holder")

        async def waiter(name: str) -> None:
            async with turns.turn("u"):
                done.append(name)

        held = asyncio.create_task(holder())
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(waiter("cancelled"))
        after = asyncio.create_task(waiter("after"))
        await asyncio.sleep(0)
        cancelled.cancel()
        release.set()
        await asyncio.gather(held, after)
        assert cancelled.cancelled()
        return done

    assert asyncio.run(scenario()) == ["holder", "after"]
    assert len(turns) == 0


def test_commands_beyond_the_route_threads_share_a_group_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commands run in threads of their own (COMMAND_THREADS), not in the few route
    threads: sixteen users' creates at once wait for the same commit, and go in with it."""
    settings = make_settings(None, tmp_path, worker_threads=1, command_threads=16)
    with serving(settings) as client:
        saver = services_of(client).ledger._saver
        group_commit = saver._group_commit
        save = group_commit._save

        def slow_save(*events: Any) -> Any:
            time.sleep(0.1)  # long enough that the others arrive meanwhile
            return save(*events)

        monkeypatch.setattr(group_commit, "_save", slow_save)
        users = [User() for _ in range(16)]
        answers = in_threads(
            16,
            lambda i: client.post(
                users[i].tasks_url(), json={"title": "x"}, headers=users[i].headers
            ),
        )
        assert [answer.status_code for answer in answers] == [201] * 16
        # In one route thread they would have been saved one transaction each.
        assert group_commit.saves == 16
        assert group_commit.groups <= 4, group_commit.groups
