"""The upgrade to read model 2 (plans), as an operator runs it: from what release ab762a8
left behind (tests/fixtures/release_ab762a8: its event log and the read model version 1
its own start-up built, ``events.sqlite3`` and ``read.sqlite3``, or ``postgres.sql``
holding both), with that release's own code still serving.

The old release's ``serve`` (its code taken from git, ``git archive ab762a8``) serves
lists and takes writes throughout; this release's ``taskledger project`` builds version 2
beside version 1, in small batches so that the build lasts, and makes it live; the old
process follows the switch (version 2's tables hold every column it reads). Every list
meanwhile is complete and shows every write acknowledged before it; then this release's
``serve`` lists every old task at the plan's defaults.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from read_side.versions import READ_MODEL_VERSION
from tests.api.processes import process_env, start_projector
from tests.api.test_rebuild import Clients
from tests.support import (
    ROOT,
    LiveServer,
    StartProcess,
    User,
    free_port,
    taskledger,
    wait_for,
    wait_until_ready,
)

RELEASE = "ab762a8"
FIXTURE = ROOT / "tests" / "fixtures" / f"release_{RELEASE}"
EXPECTED: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
USERS: dict[str, dict[str, Any]] = EXPECTED["users"]
DEFAULTS: dict[str, Any] = {
    "priority": "none",
    "tags": [],
    "due_at": None,
    "remind_at": None,
    "recurrence": None,
    "recurs_from": None,
}


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tree of the release that wrote the fixture, from this repository's history."""
    tree = tmp_path_factory.mktemp(f"release_{RELEASE}")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", RELEASE],
        capture_output=True,
        check=False,
    )
    assert archive.returncode == 0, (
        f"release {RELEASE} is not in this clone's history (a shallow clone?): "
        + archive.stderr.decode(errors="replace")
    )
    archive_path = tree / "release.tar"
    archive_path.write_bytes(archive.stdout)
    with tarfile.open(archive_path) as tar:
        tar.extractall(tree, filter="data")
    yield tree


def _old_release_store(backend: str, data_dir: Path, request: pytest.FixtureRequest) -> str | None:
    """The database URL (None: SQLite in ``data_dir``) holding the old release's state."""
    if backend == "sqlite":
        for name in ("events.sqlite3", "read.sqlite3"):
            shutil.copyfile(FIXTURE / name, data_dir / name)
        return None
    url = str(request.getfixturevalue("fresh_postgres_url"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((FIXTURE / "postgres.sql").read_text(encoding="utf-8").encode())
    return url


class Listers:
    """One thread per fixture user, listing without pause: each list must hold the
    user's tasks, all of them, whichever build serves it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.lists = 0
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(user_id,), daemon=True) for user_id in USERS
        ]

    def __enter__(self) -> Listers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, user_id: str) -> None:
        user = User(user_id)
        expected = {task["id"] for task in USERS[user_id]["tasks"]}
        with httpx.Client(base_url=self.base_url, headers=user.headers, timeout=30) as http:
            while not self._stop.is_set():
                listed = http.get(user.tasks_url(), params={"limit": 500})
                self.lists += 1
                if listed.status_code != 200:
                    self.wrong.append(f"{user_id}: {listed.status_code} {listed.text[:200]}")
                    continue
                found = {task["id"] for task in listed.json()}
                # A task written during the upgrade may be there too; none may be missing.
                if not expected <= found:
                    self.wrong.append(f"{user_id}: {len(expected - found)} tasks missing")


def _live_versions(env: dict[str, str]) -> list[tuple[int, str]]:
    result = taskledger("projections", "status", "--json", env=env)
    builds = json.loads(result.stdout or "[]")
    return [(build["version"], build["state"]) for build in builds]


def test_a_rolling_upgrade_from_the_old_release_keeps_lists_complete_throughout(
    backend: str,
    tmp_path: Path,
    old_release: Path,
    start_process: StartProcess,
    live_server: LiveServer,
    request: pytest.FixtureRequest,
) -> None:
    # The plan's version or a later one: the old release upgrades straight to this code's.
    assert READ_MODEL_VERSION >= 2
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    url = _old_release_store(backend, data_dir, request)
    env = process_env(url, data_dir)
    port = free_port()
    old = start_process(["serve", "--port", str(port)], env, name="old-serve", cwd=old_release)
    old_url = f"http://127.0.0.1:{port}"
    wait_until_ready(old_url, old)
    served: list[int] = []

    def version_2_served() -> bool:
        ready = httpx.get(old_url + "/readyz", timeout=30).json()
        served.append(ready["read_model"]["version"])
        return served[-1] == READ_MODEL_VERSION

    with Listers(old_url) as listers, Clients(old_url) as writers:
        version_2_served()
        time.sleep(1)
        # Small batches: version 2's build lasts long enough to be listed through.
        start_projector(start_process, env | {"REBUILD_BATCH_SIZE": "2"})
        wait_for(version_2_served, 120, "the old release to serve read model version 2")
        time.sleep(2)  # lists and writes go on past the switch
    # Version 1 was served while version 2 was built: the lists went on through both.
    assert served[0] == 1 and served[-1] == READ_MODEL_VERSION, served
    assert listers.wrong == [], listers.wrong[:5]
    assert writers.wrong == [], writers.wrong[:5]
    assert listers.lists > 20 and sum(writers.acknowledged.values()) > 20
    # The old build is retired, or already dropped after its grace.
    assert [v for v in _live_versions(env) if v[1] != "retired"] == [(READ_MODEL_VERSION, "live")]

    # This release's serve: every old task at the plan's defaults, and plans work.
    base_url, _ = live_server(env)
    for user_id, expected in USERS.items():
        user = User(user_id)
        params: dict[str, str | int] = {"limit": 500, "sort": "created_at", "order": "asc"}
        listed = httpx.get(
            base_url + user.tasks_url(), params=params, headers=user.headers, timeout=30
        ).json()
        assert [task["id"] for task in listed] == [task["id"] for task in expected["tasks"]]
        for task, was in zip(listed, expected["tasks"], strict=True):
            assert {name: task[name] for name in DEFAULTS} == DEFAULTS, task
            assert (task["title"], task["completed"]) == (was["title"], was["completed"])
    alice = User("user_alice")
    old_task = USERS[alice.id]["tasks"][0]
    planned = httpx.put(
        base_url + alice.tasks_url(old_task["id"]),
        json={"priority": "high", "tags": ["Upgrade"]},
        headers=alice.headers,
        timeout=30,
    )
    assert planned.status_code == 200, planned.text
    assert (planned.json()["priority"], planned.json()["tags"]) == ("high", ["Upgrade"])

    # The past across the upgrade: as of just before the plan, and at the old release's
    # last version, the list that release wrote, at the defaults; as of the plan, the plan.
    def past(user: User, **params: str | int) -> list[dict[str, Any]]:
        params = {"limit": 500, "sort": "created_at", "order": "asc", **params}
        response = httpx.get(
            base_url + user.tasks_url(), params=params, headers=user.headers, timeout=30
        )
        assert response.status_code == 200, response.text
        listed: list[dict[str, Any]] = response.json()
        return listed

    planned_at = datetime.fromisoformat(planned.json()["updated_at"])
    before = past(alice, as_of=(planned_at - timedelta(microseconds=1)).isoformat())
    assert [task["id"] for task in before] == [task["id"] for task in USERS[alice.id]["tasks"]]
    assert all({name: task[name] for name in DEFAULTS} == DEFAULTS for task in before), before
    assert past(alice, at_version=USERS[alice.id]["version"]) == before
    assert past(alice, as_of=planned_at.isoformat())[0] == planned.json()
    # A list read from its old snapshots: as the read tables show it.
    erin = User("user_erin_longest")
    assert past(erin, as_of=datetime.now(UTC).isoformat()) == past(erin)
    tags = httpx.get(base_url + f"/api/{alice.id}/tags", headers=alice.headers, timeout=30)
    assert tags.json() == [{"name": "Upgrade", "count": 1}]
