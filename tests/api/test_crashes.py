"""Crashes under load, on PostgreSQL: the API killed mid-request, the projector killed
every second. Every acknowledged write survives, and nothing is half-applied: the read
table ends equal to a full replay of the log."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from uuid import UUID

import httpx
import pytest

from tests.api.processes import (
    assert_read_table_equals_replay,
    process_env,
    projection_caught_up,
    start_projector,
)
from tests.support import Background, LiveServer, StartProcess, mint, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


class Writers:
    """Threads creating and toggling tasks until stopped; they keep what was acknowledged."""

    def __init__(self, base_url: Callable[[], str], count: int = 4) -> None:
        self.base_url = base_url
        self.created: set[UUID] = set()
        self.failures = 0
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        self._running = Background(*(partial(self._write, f"crash_{i}") for i in range(count)))

    def start(self) -> None:
        self._running.start()

    def stop(self) -> None:
        self._running.stop(30)

    def _write(self, user: str, stopping: threading.Event) -> None:
        headers = {"Authorization": f"Bearer {mint(user)}"}
        mine: list[str] = []
        i = 0
        while not stopping.is_set():
            i += 1
            try:
                if mine and i % 3 == 0:
                    url = f"{self.base_url()}/api/{user}/tasks/{mine[-1]}/complete"
                    response = httpx.patch(url, headers=headers, timeout=10)
                else:
                    url = f"{self.base_url()}/api/{user}/tasks"
                    response = httpx.post(url, json={"title": f"t{i}"}, headers=headers, timeout=10)
            except httpx.HTTPError:
                # The server died under this request: its outcome is unknown, and
                # nothing is claimed about it.
                with self._lock:
                    self.failures += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.statuses.append(response.status_code)
                if response.status_code == 201:
                    mine.append(response.json()["id"])
                    self.created.add(UUID(response.json()["id"]))


def test_the_api_killed_mid_request_loses_no_acknowledged_write(
    fresh_postgres_url: str,
    tmp_path: Path,
    live_server: LiveServer,
) -> None:
    env = process_env(fresh_postgres_url, tmp_path)
    url, server = live_server(env)
    current = {"url": url}
    writers = Writers(lambda: current["url"])
    writers.start()
    for _ in range(2):
        time.sleep(1.5)
        server.kill()  # SIGKILL, in the middle of requests
        time.sleep(0.3)
        current["url"], server = live_server(env)
    time.sleep(1.0)
    writers.stop()
    wait_for(lambda: projection_caught_up(current["url"]), 30, "the projection to catch up")

    assert not [status for status in writers.statuses if status >= 500]
    assert writers.failures > 0, "no request was cut off: the kill proved nothing"
    log = assert_read_table_equals_replay(fresh_postgres_url, tmp_path)
    assert writers.created <= log.tasks.keys(), "an acknowledged create is missing"
    print(f"\n{len(writers.created)} creates acknowledged, {writers.failures} cut off")


def test_the_projector_killed_every_second_applies_each_event_once(
    fresh_postgres_url: str,
    tmp_path: Path,
    start_process: StartProcess,
    live_server: LiveServer,
) -> None:
    env = {**process_env(fresh_postgres_url, tmp_path), "READ_YOUR_WRITES_TIMEOUT_SECONDS": "0"}
    base_url, _ = live_server(env, "--no-projector")
    writers = Writers(lambda: base_url)
    writers.start()
    kills = 5
    for _ in range(kills):
        projector = start_projector(start_process, env)
        time.sleep(1.0)  # projecting the writes meanwhile, and those of the gap before
        projector.kill()
    writers.stop()
    start_projector(start_process, env)
    wait_for(lambda: projection_caught_up(base_url), 60, "the projection to catch up")

    assert set(writers.statuses) <= {200, 201}
    log = assert_read_table_equals_replay(fresh_postgres_url, tmp_path)
    assert writers.created <= log.tasks.keys()
    print(f"\n{kills} projector kills, {len(writers.created)} creates acknowledged")
