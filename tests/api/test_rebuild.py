"""Blue/green rebuilds and rolling upgrades with real processes on PostgreSQL: lists stay
complete while a rebuild runs under load, a rebuild killed half way leaves the live
build serving, a process of the next release builds its version beside the old one,
and a stalled projection turns /readyz and `projections status` red."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from read_side.projector import read_position
from read_side.runtime.engine import create_read_engine
from read_side.versions import READ_MODEL_VERSION
from tests.api.processes import process_env
from tests.support import (
    LiveProcess,
    LiveServer,
    StartProcess,
    User,
    free_port,
    make_settings,
    open_ledger,
    taskledger,
    wait_for,
)
from write_side import TaskList

pytestmark = pytest.mark.postgres


def _seed(url: str, data_dir: Path, users: int, tasks: int) -> dict[str, int]:
    """``users`` times ``tasks`` tasks written straight to the log (many per transaction)."""
    ledger = open_ledger(make_settings(url, data_dir))
    try:
        counts = {}
        for n in range(users):
            user_id = f"seeded-{n}"
            stream = ledger.task_list(user_id) or TaskList.start(user_id)
            for k in range(tasks):
                stream.add(f"seeded task {k}", None)
            ledger.save(stream)
            counts[user_id] = tasks
        return counts
    finally:
        ledger.close()


def _seeded_server(
    url: str, data_dir: Path, live_server: LiveServer, *, users: int, tasks: int
) -> tuple[dict[str, str], dict[str, int], str]:
    """A seeded log, and `serve` on it once everything is projected."""
    env = process_env(url, data_dir)
    seeded = _seed(url, data_dir, users=users, tasks=tasks)
    base_url, _ = live_server(env)
    wait_for(lambda: _caught_up(base_url), 60, "the seeded log to be projected")
    return env, seeded, base_url


def _total(base_url: str, user: User) -> int:
    response = httpx.get(base_url + user.tasks_url() + "?limit=1", headers=user.headers, timeout=10)
    assert response.status_code == 200, response.text
    return int(response.headers["x-total-count"])


def _status(env: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    result = taskledger("projections", "status", "--json", env=env)
    return result.returncode, json.loads(result.stdout or "[]")


def _caught_up(base_url: str) -> bool:
    ready = httpx.get(base_url + "/readyz", timeout=10)
    return ready.status_code == 200 and ready.json()["projection_lag_events"] == 0


class Clients:
    """Four users writing and listing without pause: every list must show exactly the
    writes acknowledged before it was sent."""

    def __init__(self, base_url: str, count: int = 4) -> None:
        self.base_url = base_url
        self.users = [User() for _ in range(count)]
        self.acknowledged = dict.fromkeys(range(count), 0)
        self.lists = 0
        self.pending = 0
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)
        ]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, i: int) -> None:
        user = self.users[i]
        with httpx.Client(base_url=self.base_url, headers=user.headers, timeout=30) as http:
            while not self._stop.is_set():
                created = http.post(user.tasks_url(), json={"title": f"t{self.acknowledged[i]}"})
                if created.status_code != 201:
                    self.wrong.append(f"create answered {created.status_code}: {created.text}")
                    continue
                self.acknowledged[i] += 1
                if created.headers.get("x-projection-pending"):
                    self.pending += 1
                    continue
                listed = http.get(user.tasks_url() + "?limit=1")
                self.lists += 1
                total = int(listed.headers.get("x-total-count", -1))
                if listed.status_code != 200 or total != self.acknowledged[i]:
                    self.wrong.append(
                        f"list answered {listed.status_code} with {total} tasks, "
                        f"{self.acknowledged[i]} acknowledged"
                    )


def test_a_rebuild_under_load_serves_complete_lists_throughout(
    fresh_postgres_url: str, tmp_path: Path, live_server: LiveServer
) -> None:
    env, seeded, base_url = _seeded_server(
        fresh_postgres_url, tmp_path, live_server, users=20, tasks=150
    )
    with Clients(base_url) as clients:
        time.sleep(1)
        # Small batches: the rebuild lasts long enough to be listed through.
        rebuilt = taskledger(
            "projections", "rebuild", "--yes", env=env | {"REBUILD_BATCH_SIZE": "100"}
        )
        time.sleep(2)  # past the switch, while every process follows it
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "is live" in rebuilt.stderr and "dropped v" in rebuilt.stderr
    assert clients.wrong == [], clients.wrong[:5]
    assert clients.lists > 20 and clients.pending == 0
    code, builds = _status(env)
    assert code == 0 and [(b["build"], b["state"]) for b in builds] == [(1, "live")]
    for user_id, count in list(seeded.items())[:3]:
        assert _total(base_url, User(user_id)) == count
    verified = taskledger("projections", "verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert " 0 differences" in verified.stdout


def test_a_rebuild_killed_half_way_leaves_the_live_build_and_the_next_one_succeeds(
    fresh_postgres_url: str,
    tmp_path: Path,
    live_server: LiveServer,
    start_process: StartProcess,
) -> None:
    env, seeded, base_url = _seeded_server(
        fresh_postgres_url, tmp_path, live_server, users=10, tasks=400
    )
    slow = env | {"REBUILD_BATCH_SIZE": "2"}
    first = start_process(["projections", "rebuild", "--yes"], slow, name="rebuild")
    engine = create_read_engine(make_settings(fresh_postgres_url, tmp_path).storage.read_url)
    building = f"tasks_v{READ_MODEL_VERSION}_b1"

    def half_way() -> bool:
        with engine.connect() as conn:
            return read_position(conn, building) > 400

    try:
        wait_for(half_way, 60, "the rebuild to be under way", interval=0.01)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGSTOP)  # held where it is, then killed there
        _, builds = _status(env)
        assert [b["state"].split(" ")[0] for b in builds] == ["live", "building"], builds
        first.kill()  # SIGKILL: nothing of it runs after this
    finally:
        engine.dispose()
    user = User("seeded-0")
    assert _total(base_url, user) == seeded["seeded-0"]
    created = httpx.post(base_url + user.tasks_url(), json={"title": "after"}, headers=user.headers)
    assert created.status_code == 201 and not created.headers.get("x-projection-pending")
    assert _total(base_url, user) == seeded["seeded-0"] + 1
    second = taskledger("projections", "rebuild", "--yes", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "left unfinished" in second.stderr
    code, builds = _status(env)
    assert code == 0 and [(b["build"], b["state"]) for b in builds] == [(2, "live")]
    wait_for(lambda: _total(base_url, user) == seeded["seeded-0"] + 1, 5, "the new build")
    verified = taskledger("projections", "verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # A row of the new build altered by hand: verify of that build names it.
    engine = create_read_engine(make_settings(fresh_postgres_url, tmp_path).storage.read_url)
    try:
        with engine.begin() as conn:
            table = f"task_view_v{READ_MODEL_VERSION}_b2"
            conn.execute(text(f"UPDATE {table} SET title = 'tampered' WHERE title = 'after'"))  # noqa: S608
    finally:
        engine.dispose()
    damaged = taskledger("projections", "verify", "--build", "2", env=env)
    assert damaged.returncode == 1
    assert f"v{READ_MODEL_VERSION} (build 2)" in damaged.stdout and "tampered" in damaged.stdout


def test_two_rebuilds_at_once_the_second_refuses(
    fresh_postgres_url: str, tmp_path: Path, start_process: StartProcess
) -> None:
    env = process_env(fresh_postgres_url, tmp_path)
    _seed(fresh_postgres_url, tmp_path, users=10, tasks=300)
    first = start_process(
        ["projections", "rebuild", "--yes"], env | {"REBUILD_BATCH_SIZE": "5"}, name="rebuild"
    )
    wait_for(lambda: "building v" in first.output(), 30, "the first rebuild to start")
    second = taskledger("projections", "rebuild", "--yes", env=env)
    assert second.returncode == 1
    assert "another build of the read model is under way" in second.stderr
    assert "held by" in second.stderr


def test_a_rolling_upgrade_builds_the_next_version_while_the_old_process_serves(
    fresh_postgres_url: str,
    tmp_path: Path,
    live_server: LiveServer,
    start_process: StartProcess,
) -> None:
    env, seeded, old_url = _seeded_server(
        fresh_postgres_url, tmp_path, live_server, users=10, tasks=300
    )
    port = free_port()
    new_url = f"http://127.0.0.1:{port}"
    new = start_process(
        ["serve", "--port", str(port)],
        env | {"REBUILD_BATCH_SIZE": "20"},
        name="next",
        module="tests.api.next_release",
    )
    seen_building: list[dict[str, Any]] = []

    def new_is_ready() -> bool:
        _alive(new)
        try:
            ready = httpx.get(new_url + "/readyz", timeout=5)
        except httpx.HTTPError:
            return False
        if ready.status_code == 503 and ready.json().get("readiness") == "building":
            seen_building.append(ready.json())
        return ready.status_code == 200

    with Clients(old_url) as clients:
        wait_for(new_is_ready, 90, "the next release to build its version", interval=0.2)
        time.sleep(2)  # the old process follows the switch
    assert seen_building, "the new process never said it was building"
    assert any(isinstance(b["build"], dict) and b["build"]["percent"] < 100 for b in seen_building)
    assert clients.wrong == [], clients.wrong[:5]
    assert clients.lists > 10
    # Both now serve the new version, every write in it.
    for user in clients.users[:2]:
        assert _total(old_url, user) == _total(new_url, user) > 0
    assert _total(new_url, User("seeded-3")) == seeded["seeded-3"]
    old_ready = httpx.get(old_url + "/readyz", timeout=5).json()
    assert (
        old_ready["status"] == "ready"
        and old_ready["read_model"]["version"] == READ_MODEL_VERSION + 1
    )
    new_ready = httpx.get(new_url + "/readyz", timeout=5).json()
    assert old_ready["read_model"]["build"] == new_ready["read_model"]["build"]
    assert new_ready["read_model"]["version"] == READ_MODEL_VERSION + 1


def _alive(proc: LiveProcess) -> None:
    assert proc.proc is not None
    if proc.proc.poll() is not None:
        raise AssertionError(f"exited early:\n{proc.output()}")


def test_a_stalled_projection_turns_readiness_and_status_red_until_it_moves(
    fresh_postgres_url: str, tmp_path: Path, live_server: LiveServer
) -> None:
    env = process_env(fresh_postgres_url, tmp_path) | {"PROJECTION_STALL_SECONDS": "1"}
    base_url, _ = live_server(env)
    user = User()
    assert httpx.post(base_url + user.tasks_url(), json={"title": "a"}, headers=user.headers)
    engine = create_read_engine(make_settings(fresh_postgres_url, tmp_path).storage.read_url)
    release = threading.Event()
    held = threading.Event()

    def hold_the_position_row() -> None:
        # What a stuck transaction does: the projector's next batch waits on the lock.
        with engine.connect() as conn:
            conn.execute(text("SELECT 1 FROM projection_position WHERE name = 'tasks' FOR UPDATE"))
            held.set()
            release.wait(60)
            conn.rollback()

    holder = threading.Thread(target=hold_the_position_row, daemon=True)
    holder.start()
    held.wait(10)
    try:
        written = httpx.post(
            base_url + user.tasks_url(), json={"title": "stuck"}, headers=user.headers, timeout=30
        )
        assert written.status_code == 201 and written.headers["x-projection-pending"] == "true"

        def stalled() -> bool:
            ready = httpx.get(base_url + "/readyz", timeout=10)
            return ready.status_code == 503 and ready.json().get("readiness") == "stalled"

        wait_for(stalled, 20, "/readyz to say stalled")
        body = httpx.get(base_url + "/readyz", timeout=10).json()
        assert "writes are still accepted" in body["detail"]
        code, builds = _status(env)
        assert code == 1 and builds[0]["state"] == "stalled"
        metrics = httpx.get(base_url + "/metrics", timeout=10).text
        labels = f'build="0",state="stalled",version="{READ_MODEL_VERSION}"'
        assert f"taskledger_build_state{{{labels}}} 1" in metrics
    finally:
        release.set()
        holder.join(10)
        engine.dispose()
    wait_for(lambda: _caught_up(base_url), 30, "the projection to move again")
    assert _status(env)[0] == 0
    assert _total(base_url, user) == 2
