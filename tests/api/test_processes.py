"""Process tier: real `taskledger serve` and `taskledger project` processes.

These tests prove the Consistency and Scale parts of the design with the processes an
operator would run, over real HTTP:

- read-your-writes across processes: `serve --no-projector` replicas with a separate
  `project` worker, every write visible on the very next read, from either replica;
- exactly-once under SIGKILL: the projector is killed -9 in the middle of a stream of
  writes and restarted (or a standby takes over); afterwards the read table equals a
  full replay of the event log, and every acknowledged write is in that log;
- a write acknowledged while no projector runs answers within the read-your-writes
  timeout, says so (`X-Projection-Pending: true`), and shows once a projector runs.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest

from tests.api.processes import (
    LogState,
    assert_read_table_equals_replay,
    normal,
    process_env,
    projection_caught_up,
    start_projector,
)
from tests.support import (
    Background,
    LiveProcess,
    LiveServer,
    StartProcess,
    User,
    wait_for,
)
from write_side import TaskList

pytestmark = pytest.mark.slow

PENDING = "X-Projection-Pending"
POSITION = "X-Ledger-Position"


# A writer that remembers what was acknowledged ------------------------------


@dataclass
class Ack:
    position: int
    task_id: UUID
    event: str  # the class name of the event that the write must have recorded
    pending: bool  # answered before the projection had it


@dataclass
class Writer:
    """Writes one user's tasks over HTTP and keeps the model of what was acknowledged."""

    base_url: str
    user: User = field(default_factory=User)
    seed: int = 0
    tasks: dict[UUID, dict[str, Any]] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)
    pending: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.client = httpx.Client(base_url=self.base_url, headers=self.user.headers, timeout=30)

    def close(self) -> None:
        self.client.close()

    def step(self, n: int) -> tuple[str, UUID]:
        """One write: create mostly, otherwise edit, toggle or delete a known task."""
        # Create while there are few tasks, then half the time.
        action = 0.0 if len(self.tasks) < 3 else self.random.random()
        if action < 0.5:
            response = self.client.post(
                self.user.tasks_url(),
                json={"title": f"task {n}", "description": self.random.choice([None, f"d{n}"])},
            )
            return self._acked(response, 201, "TaskAdded")
        task_id = self.random.choice(list(self.tasks))
        url = self.user.tasks_url(str(task_id))
        if action < 0.7:
            response = self.client.put(url, json={"title": f"edited {n}"})
            return self._acked(response, 200, "TaskEdited")
        if action < 0.9:
            completed = self.tasks[task_id]["completed"]
            response = self.client.patch(url + "/complete")
            return self._acked(response, 200, "TaskReopened" if completed else "TaskCompleted")
        response = self.client.delete(url)
        return self._acked(response, 204, "TaskDeleted", task_id)

    def _acked(
        self, response: httpx.Response, status: int, event: str, task_id: UUID | None = None
    ) -> tuple[str, UUID]:
        assert response.status_code == status, response.text
        pending = response.headers.get(PENDING) == "true"
        self.pending += pending
        if task_id is None:
            task = normal(response.json())
            assert task["user_id"] == self.user.id
            task_id = task["id"]
            self.tasks[task_id] = task
        else:
            del self.tasks[task_id]
        self.acks.append(Ack(int(response.headers[POSITION]), task_id, event, pending))
        return event, task_id

    def run_until(self, stop: threading.Event) -> None:
        try:
            n = 0
            while not stop.is_set():
                self.step(n)
                n += 1
        except BaseException as error:  # reported by the test thread
            self.error = error

    def assert_all_in(self, log: LogState) -> None:
        """Every acknowledged write is in the log, where its position says, and the
        user's tasks in the log are exactly those the acknowledgements describe."""
        for ack in self.acks:
            event = log.events.get(ack.position)
            assert event is not None, f"acknowledged write at {ack.position} is not in the log"
            assert type(event).__name__ == ack.event, (ack, event)
            assert event.task_id == ack.task_id, (ack, event)
            assert event.originator_id == TaskList.create_id(self.user.id)
        mine = {k: v for k, v in log.tasks.items() if v["user_id"] == self.user.id}
        assert mine == self.tasks


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    made: list[Writer] = []
    yield made
    for writer in made:
        writer.close()


def run_writers(writers: list[Writer]) -> Background:
    running = Background(*(w.run_until for w in writers), daemon=True)
    running.start()
    return running


def stop_writers(writers: list[Writer], running: Background) -> None:
    assert not running.stop(60), "a writer hung"
    for writer in writers:
        if writer.error is not None:
            raise writer.error


# 1. Read-your-writes with a separate projector --------------------------------


def write_then_read_cycles(
    write_url: str, read_urls: list[str], cycles: int, users: int = 8, seed: int = 7
) -> None:
    """``cycles`` times: a write on ``write_url``, then a read on the next of
    ``read_urls`` that must show it. Every write must have waited for its projection."""
    rng = random.Random(seed)
    people = [User() for _ in range(users)]
    model: dict[str, dict[str, dict[str, Any]]] = {u.id: {} for u in people}
    writer = httpx.Client(base_url=write_url, timeout=30)
    readers = [httpx.Client(base_url=url, timeout=30) for url in read_urls]
    try:
        for n in range(cycles):
            user = people[n % users]
            mine = model[user.id]
            reader = readers[n % len(readers)]
            # Create, then the list must hold it (and be exactly what was acknowledged).
            created = writer.post(
                user.tasks_url(), json={"title": f"cycle {n}"}, headers=user.headers
            )
            assert created.status_code == 201, created.text
            assert PENDING not in created.headers, f"cycle {n}: write not projected in time"
            task = created.json()
            mine[task["id"]] = task
            listed = reader.get(user.tasks_url(), params={"limit": 500}, headers=user.headers)
            assert listed.status_code == 200, listed.text
            assert any(t["id"] == task["id"] for t in listed.json()), f"cycle {n}: create unseen"
            assert {t["id"]: t for t in listed.json()} == mine, f"cycle {n}: list differs"
            assert listed.headers["X-Total-Count"] == str(len(mine))
            if n % 3 != 2 or len(mine) < 2:
                continue
            # Now and then change an older task; GET it on the next read.
            task_id = rng.choice(list(mine))
            url = user.tasks_url(task_id)
            action = rng.choice(["update", "toggle", "set", "delete"])
            if action == "update":
                changed = writer.put(
                    url,
                    json={"title": f"renamed {n}", "description": f"d{n}"},
                    headers=user.headers,
                )
            elif action == "toggle":
                changed = writer.patch(url + "/complete", headers=user.headers)
            elif action == "set":
                completed = not mine[task_id]["completed"]
                changed = writer.patch(
                    url + "/complete", json={"completed": completed}, headers=user.headers
                )
            else:
                changed = writer.delete(url, headers=user.headers)
            assert changed.status_code == (204 if action == "delete" else 200), changed.text
            assert PENDING not in changed.headers, f"cycle {n}: {action} not projected in time"
            got = reader.get(url, headers=user.headers)
            if action == "delete":
                del mine[task_id]
                assert got.status_code == 404, f"cycle {n}: deleted task still shown"
            else:
                mine[task_id] = changed.json()
                assert got.status_code == 200, got.text
                assert got.json() == changed.json(), f"cycle {n}: {action} unseen"
                assert got.headers["ETag"] == changed.headers["ETag"]
    finally:
        writer.close()
        for reader in readers:
            reader.close()


@pytest.mark.postgres
def test_read_your_writes_with_separate_projector_on_postgres(
    fresh_postgres_url: str, tmp_path: Path, start_process: StartProcess, live_server: LiveServer
) -> None:
    env = process_env(fresh_postgres_url, tmp_path / "data")
    start_projector(start_process, env)
    # Two API replicas (as behind a load balancer): write on one, read on either. The
    # second one's database sessions run in another time zone: answers stay UTC.
    first, _ = live_server(env, "--no-projector")
    second, _ = live_server({**env, "PGTZ": "Asia/Kolkata"}, "--no-projector")
    assert httpx.get(first + "/readyz").json()["projector"] == "external"
    write_then_read_cycles(first, [second, first], cycles=500)
    assert_read_table_equals_replay(fresh_postgres_url, tmp_path / "data")


def test_read_your_writes_with_separate_projector_on_sqlite(
    tmp_path: Path, start_process: StartProcess, live_server: LiveServer
) -> None:
    data_dir = tmp_path / "data"
    env = process_env(None, data_dir)
    start_projector(start_process, env)
    base_url, _ = live_server(env, "--no-projector")
    write_then_read_cycles(base_url, [base_url], cycles=100)
    assert_read_table_equals_replay(None, data_dir)


# 2. kill -9 the projector in the middle of the writes --------------------------


def test_projector_killed_mid_stream_loses_and_duplicates_nothing(
    fresh_database: str | None,
    tmp_path: Path,
    start_process: StartProcess,
    live_server: LiveServer,
    writers: list[Writer],
) -> None:
    url = fresh_database
    data_dir = tmp_path / "data"
    env = process_env(url, data_dir)
    # Small batches: the backlog of the downtime takes the restarted projector many
    # transactions to catch up, and the second kill lands among them.
    projector = start_projector(start_process, {**env, "PROJECTOR_BATCH_SIZE": "5"})
    # Writes do not wait for the projection here: the writers go flat out, so that the
    # projector is always busy and falls behind whenever it is down.
    base_url, _ = live_server({**env, "READ_YOUR_WRITES_TIMEOUT_SECONDS": "0"}, "--no-projector")
    writers.extend(Writer(base_url, seed=i) for i in range(2))
    running = run_writers(writers)
    rng = random.Random(11)
    lag_at_kill = []
    try:
        # Kill while it streams, then again soon after the restart, while it catches up
        # the backlog that built up while it was down.
        for delay in (rng.uniform(0.8, 1.2), rng.uniform(0.0, 0.1)):
            time.sleep(delay)
            lag_at_kill.append(httpx.get(base_url + "/readyz").json()["projection_lag_events"])
            projector.kill()  # SIGKILL: no clean-up, wherever it was
            time.sleep(0.5)
            projector = start_projector(start_process, {**env, "PROJECTOR_BATCH_SIZE": "5"})
        time.sleep(0.5)
    finally:
        stop_writers(writers, running)
    wait_for(lambda: projection_caught_up(base_url), 30, "the projector to catch up")
    log = assert_read_table_equals_replay(url, data_dir)
    assert {w.user.id for w in writers} == log.users
    for writer in writers:
        writer.assert_all_in(log)
    acked = sum(len(w.acks) for w in writers)
    summary = f"{acked} writes, {len(log.events)} events, lag at the kills {lag_at_kill}"
    assert acked > 100, f"too few writes to prove anything: {summary}"
    assert max(lag_at_kill) > 0, f"the projector was never killed with work to do: {summary}"


def advisory_lock_holders(conn: psycopg.Connection[Any]) -> int:
    """How many advisory locks are held in this database (projector leaders)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return int(row[0]) if row else 0


def seconds_since_standby_tried(conn: psycopg.Connection[Any]) -> float:
    """How long ago a standby last asked for the leader's lock (inf: no standby)."""
    row = conn.execute(
        "SELECT min(extract(epoch FROM clock_timestamp() - a.query_start))"
        " FROM pg_stat_activity a WHERE a.datname = current_database()"
        " AND a.query LIKE 'SELECT pg_try_advisory_lock%'"
        " AND NOT EXISTS (SELECT FROM pg_locks l WHERE l.pid = a.pid"
        " AND l.locktype = 'advisory' AND l.granted)"
    ).fetchone()
    return float("inf") if row is None or row[0] is None else float(row[0])


def kill_just_after_standby_tried(conn: psycopg.Connection[Any], leader: LiveProcess) -> None:
    """Kill ``leader`` -9 just after the standby asked for the lock (once a second),
    so that the failover leaves a gap of most of a second."""
    since = functools.partial(seconds_since_standby_tried, conn)
    wait_for(lambda: 0.3 < since() < 5, 10, "a standby", interval=0.01)
    wait_for(lambda: since() < 0.1, 5, "the standby to ask again", interval=0.01)
    # It asked and was refused: one leader.
    assert advisory_lock_holders(conn) == 1
    leader.kill()


def projected_write_after(writers: list[Writer], marks: list[int]) -> bool:
    """Whether any writer had a write projected in time since its mark."""
    for writer, mark in zip(writers, marks, strict=True):
        if writer.error is not None:
            raise writer.error
        if any(not ack.pending for ack in writer.acks[mark:]):
            return True
    return False


@pytest.mark.postgres
def test_standby_takes_over_when_the_active_projector_is_killed(
    fresh_postgres_url: str,
    tmp_path: Path,
    start_process: StartProcess,
    live_server: LiveServer,
    writers: list[Writer],
) -> None:
    data_dir = tmp_path / "data"
    env = process_env(fresh_postgres_url, data_dir)
    base_url, _ = live_server({**env, "READ_YOUR_WRITES_TIMEOUT_SECONDS": "0.3"}, "--no-projector")
    active = start_projector(start_process, env)
    writers.extend(Writer(base_url, seed=100 + i) for i in range(3))
    probe = psycopg.connect(fresh_postgres_url, autocommit=True)
    running = run_writers(writers)
    try:
        for _ in range(2):
            # The running worker leads; one started now can only stand by.
            wait_for(lambda: advisory_lock_holders(probe) == 1, 10, "a leader")
            standby = start_projector(start_process, env)
            kill_just_after_standby_tried(probe, active)
            # Let the writes in flight at the kill finish; after that only the standby
            # can project a write in time.
            time.sleep(0.4)
            marks = [len(w.acks) for w in writers]
            wait_for(
                functools.partial(projected_write_after, writers, marks), 10, "a standby to lead"
            )
            active = standby
        time.sleep(0.5)
    finally:
        probe.close()
        stop_writers(writers, running)
    wait_for(lambda: projection_caught_up(base_url), 30, "the new leader to catch up")
    log = assert_read_table_equals_replay(fresh_postgres_url, data_dir)
    for writer in writers:
        writer.assert_all_in(log)
    pending = sum(w.pending for w in writers)
    assert pending > 0, f"no write was made during a failover ({pending} pending)"


# 3. Writes while no projector runs ---------------------------------------------


def test_writes_without_a_projector_answer_pending_then_show(
    fresh_database: str | None,
    tmp_path: Path,
    start_process: StartProcess,
    live_server: LiveServer,
) -> None:
    url = fresh_database
    data_dir = tmp_path / "data"
    env = process_env(url, data_dir)
    timeout = 0.5
    base_url, _ = live_server(
        {**env, "READ_YOUR_WRITES_TIMEOUT_SECONDS": str(timeout)}, "--no-projector"
    )
    user = User()
    client = httpx.Client(base_url=base_url, headers=user.headers, timeout=30)

    def write(method: str, path: str, status: int, **kwargs: Any) -> httpx.Response:
        started = time.monotonic()
        response = client.request(method, path, **kwargs)
        elapsed = time.monotonic() - started
        assert response.status_code == status, response.text
        assert response.headers.get(PENDING) == "true", f"{method} {path}: not marked pending"
        assert int(response.headers[POSITION]) > 0
        assert timeout * 0.9 <= elapsed < timeout + 3, f"{method} {path} took {elapsed:.2f}s"
        return response

    try:
        tasks = [
            write("POST", user.tasks_url(), 201, json={"title": f"offline {n}"}).json()
            for n in range(3)
        ]
        done = write("PATCH", user.tasks_url(tasks[0]["id"]) + "/complete", 200).json()
        renamed = write("PUT", user.tasks_url(tasks[1]["id"]), 200, json={"title": "renamed"})
        write("DELETE", user.tasks_url(tasks[2]["id"]), 204)
        # The header tells the truth: the listing does not have them yet.
        assert client.get(user.tasks_url()).json() == []
        ready = client.get("/readyz").json()
        assert ready["projection_lag_events"] > 0
        assert ready["projector"] == "external"

        start_projector(start_process, env)
        expected = sorted([done, renamed.json()], key=lambda t: t["id"])

        def shown() -> bool:
            listed = client.get(user.tasks_url()).json()
            return bool(sorted(listed, key=lambda t: t["id"]) == expected)

        wait_for(shown, 15, "the writes to show once the projector runs")
        assert client.get(user.tasks_url(tasks[2]["id"])).status_code == 404
        # With a projector running, writes are read-your-writes again. (The timeout
        # is short for this test: on a loaded machine one write may still miss it.)
        for attempt in range(5):
            after = client.post(user.tasks_url(), json={"title": f"online {attempt}"})
            assert after.status_code == 201, after.text
            if PENDING not in after.headers:
                break
        else:
            raise AssertionError("writes stay pending with the projector running")
        assert after.json()["id"] in {t["id"] for t in client.get(user.tasks_url()).json()}
    finally:
        client.close()
    assert_read_table_equals_replay(url, data_dir)
