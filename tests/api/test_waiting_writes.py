"""Waiting costs nothing: a thousand writes waiting for their projection (the projector
stopped) hold no route thread, so another user's listing is answered as usual; /readyz
reports the projection as degraded, with its lag; and once the projector runs again
every waiting write is acknowledged as projected."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx

from tests.support import LiveServer, StartProcess, User, service_env, wait_for

WAITERS = 1000


async def _writes(base_url: str, users: list[User]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=WAITERS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:
        return await asyncio.gather(
            *(
                client.post(user.tasks_url(), json={"title": "waiting"}, headers=user.headers)
                for user in users
            )
        )


def test_a_thousand_waiting_writes_leave_listings_alone(
    fresh_database: str | None,
    tmp_path: Path,
    live_server: LiveServer,
    start_process: StartProcess,
) -> None:
    env = service_env(
        fresh_database,
        tmp_path / "data",
        # Long enough that every write is still waiting when the projector comes back.
        READ_YOUR_WRITES_TIMEOUT_SECONDS="90",
        MAX_CONNECTIONS=str(WAITERS + 100),
        READY_MAX_LAG_EVENTS="100",
    )
    projector = start_process(["project"], env, name="project")
    base_url, _ = live_server(env, "--no-projector")
    lister = User()
    for title in ("a", "b", "c"):
        # (The projector process may still be starting.)
        created = httpx.post(
            base_url + lister.tasks_url(), json={"title": title}, headers=lister.headers, timeout=60
        )
        assert "x-projection-pending" not in created.headers
    projector.stop()

    answers: list[httpx.Response] = []
    writers = threading.Thread(
        target=lambda: answers.extend(
            asyncio.run(_writes(base_url, [User() for _ in range(WAITERS)]))
        )
    )
    writers.start()

    def saved() -> bool:
        # While the thousand saves queue for the route threads, so does this probe.
        try:
            ready = httpx.get(base_url + "/readyz", timeout=10).json()
        except httpx.TimeoutException:
            return False
        return bool(ready["log_position"] >= WAITERS + 3)

    wait_for(saved, 90, "every write to be saved", interval=0.2)
    for _ in range(10):
        # Answered within the timeout, while a thousand writes wait.
        listing = httpx.get(base_url + lister.tasks_url(), headers=lister.headers, timeout=2)
        assert listing.status_code == 200
        assert sorted(task["title"] for task in listing.json()) == ["a", "b", "c"]
    ready = httpx.get(base_url + "/readyz", timeout=10)
    # Degraded, not unavailable: every replica shares this projection, and writes are
    # still durable (see README: READY_DEGRADED_STATUS).
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "degraded", body
    assert body["projection_lag_events"] >= WAITERS
    assert "events behind" in body["reasons"][0]
    assert not answers  # all still waiting

    start_process(["project"], env, name="project-again")
    writers.join(120)
    assert not writers.is_alive()
    assert [answer.status_code for answer in answers] == [201] * WAITERS
    assert not [answer for answer in answers if "x-projection-pending" in answer.headers]
    wait_for(
        lambda: httpx.get(base_url + "/readyz", timeout=10).json()["status"] == "ready",
        30,
        "/readyz to be ready again",
    )
