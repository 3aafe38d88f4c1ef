"""SIGTERM under load: `taskledger serve` stops accepting, answers the writes in flight,
commits the projection of all of them and exits 0 within SHUTDOWN_TIMEOUT_SECONDS;
`taskledger project` stopped alike leaves a position that verifies.
(tests/api/test_edge_limits.py covers the requests still arriving at SIGTERM.)"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    LiveProcess,
    LiveServer,
    StartProcess,
    User,
    assert_problem,
    service_env,
    taskledger,
    wait_for,
)

GRACE_SECONDS = 5
MARGIN = 3


def write_until_refused(
    base_url: str, stopping: threading.Event, answers: list[httpx.Response]
) -> None:
    """POSTs, one after another, until the server no longer takes them."""
    user = User()
    with httpx.Client(base_url=base_url, headers=user.headers, timeout=30) as client:
        while not stopping.is_set():
            try:
                answers.append(client.post(user.tasks_url(), json={"title": "in flight"}))
            except httpx.HTTPError:
                return


def terminated(proc: LiveProcess) -> tuple[int, float]:
    """SIGTERM: the exit status, and the seconds it took."""
    assert proc.proc is not None
    started = time.monotonic()
    os.kill(proc.proc.pid, signal.SIGTERM)
    code = proc.proc.wait(GRACE_SECONDS + MARGIN)
    return code, time.monotonic() - started


def the_build(env: dict[str, str]) -> dict[str, Any]:
    """The read model's one build: its position and the log's."""
    # Exits 2 with nobody projecting (as now): the figures are printed all the same.
    status = taskledger("projections", "status", "--json", env=env)
    [build] = json.loads(status.stdout)
    return dict(build)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_finishes_the_writes_in_flight_projects_them_and_exits_0(
    live_server: LiveServer, tmp_path: Path, workers: str
) -> None:
    env = service_env(None, tmp_path / "data", SHUTDOWN_TIMEOUT_SECONDS=str(GRACE_SECONDS))
    base_url, proc = live_server(env, "--workers", workers)
    stopping = threading.Event()
    results: list[list[httpx.Response]] = [[] for _ in range(6)]
    writers = [
        threading.Thread(target=write_until_refused, args=(base_url, stopping, results[i]))
        for i in range(6)
    ]
    for writer in writers:
        writer.start()
    wait_for(lambda: sum(map(len, results)) >= 30, 30, "writes under way")
    code, seconds = terminated(proc)
    stopping.set()
    for writer in writers:
        writer.join(30)
    assert code == 0, proc.output()
    assert seconds < GRACE_SECONDS + MARGIN
    answers = [answer for answered in results for answer in answered]
    # A request still arriving at SIGTERM is refused, to be sent again; nothing else is.
    refused = [answer for answer in answers if answer.status_code != 201]
    for answer in refused:
        assert "shutting down" in assert_problem(answer, 503)["detail"]
    answers = [answer for answer in answers if answer.status_code == 201]
    # Each was answered once its projection was committed, the last ones too.
    assert not [answer for answer in answers if "x-projection-pending" in answer.headers]
    build = the_build(env)
    assert build["position"] == build["log_position"] >= len(answers)
    verified = taskledger("projections", "verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Traceback" not in proc.output()


def test_sigterm_stops_the_projector_at_a_committed_position_and_exits_0(
    live_server: LiveServer, start_process: StartProcess, tmp_path: Path
) -> None:
    env = service_env(None, tmp_path / "data", SHUTDOWN_TIMEOUT_SECONDS=str(GRACE_SECONDS))
    base_url, _ = live_server(env, "--no-projector")
    projector = start_process(["project"], env, name="project")
    wait_for(lambda: "projector running" in projector.output(), 30, "the projector")
    stopping = threading.Event()
    written: list[httpx.Response] = []
    writer = threading.Thread(target=write_until_refused, args=(base_url, stopping, written))
    writer.start()
    wait_for(lambda: len(written) >= 20, 30, "writes under way")
    code, seconds = terminated(projector)
    stopping.set()
    writer.join(30)
    assert code == 0, projector.output()
    assert seconds < GRACE_SECONDS + MARGIN
    # Whatever it had applied is committed with its position: the tables verify.
    verified = taskledger("projections", "verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert the_build(env)["position"] > 0
