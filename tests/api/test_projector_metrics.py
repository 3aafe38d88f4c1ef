"""`taskledger project --metrics-port`: a projector run apart from the API (as compose
and Kubernetes run it) serves its own figures, which no API process has: its batches,
and whether it is the active projector or a standby; with the position and lag."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.api.processes import process_env
from tests.support import (
    LiveProcess,
    StartProcess,
    free_port,
    make_settings,
    new_user_id,
    open_ledger,
    wait_for,
)

pytestmark = pytest.mark.slow


def start_projector(start_process: StartProcess, env: dict[str, str]) -> tuple[str, LiveProcess]:
    """`taskledger project --metrics-port`, answering; its base URL and process."""
    port = free_port()
    proc = start_process(["project", "--metrics-port", str(port)], env, name="project")
    base_url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        assert proc.proc is not None
        if proc.proc.poll() is not None:
            raise AssertionError(f"projector exited early:\n{proc.output()}")
        try:
            return httpx.get(base_url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answering, 30, "the projector's metrics server")
    return base_url, proc


def scrape(base_url: str) -> dict[str, float]:
    """Each series' value, by its name and labels (``name{label="value"}``)."""
    answer = httpx.get(base_url + "/metrics", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        series(sample): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def series(sample: Sample) -> str:
    labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}" if labels else sample.name


def part(base_url: str) -> str:
    found: str = httpx.get(base_url + "/healthz", timeout=5).json()["projector"]
    return found


BATCHES = 'taskledger_projector_batch_events_count{projection="tasks"}'
EVENTS = 'taskledger_projector_batch_events_sum{projection="tasks"}'
SECONDS = 'taskledger_projector_batch_seconds_count{projection="tasks"}'


def test_a_projector_apart_serves_its_batches_position_and_part(
    fresh_postgres_url: str, tmp_path: Path, start_process: StartProcess
) -> None:
    env = process_env(fresh_postgres_url, tmp_path)
    active_url, active = start_projector(start_process, env)
    wait_for(lambda: part(active_url) == "active", 30, "the first projector to lead")
    standby_url, standby = start_projector(start_process, env)
    assert part(standby_url) == "standby"
    before = scrape(active_url)
    assert before["taskledger_projector_active"] == 1

    ledger = open_ledger(make_settings(fresh_postgres_url, tmp_path))
    try:
        user_id = new_user_id()
        for n in range(5):
            ledger.add_task(user_id, f"task {n}", None)
        log_end = ledger.last_position()
    finally:
        ledger.close()
    assert log_end >= 5

    def projected() -> bool:
        return scrape(active_url).get("taskledger_projected_position") == log_end

    wait_for(projected, 30, "the projector's scrape to reach the end of the log")
    after = scrape(active_url)
    assert after[BATCHES] > before.get(BATCHES, 0)
    assert after[SECONDS] == after[BATCHES]
    # Every event written was applied by this process, in those batches.
    assert after[EVENTS] - before.get(EVENTS, 0) == log_end
    assert after["taskledger_log_position"] == log_end
    assert after["taskledger_projection_lag_events"] == 0
    assert after["process_resident_memory_bytes"] > 0
    # The standby shows the same position (read from the database), none of the work.
    waiting = scrape(standby_url)
    assert waiting["taskledger_projector_active"] == 0
    assert waiting.get(BATCHES, 0) == 0
    assert waiting["taskledger_projected_position"] == log_end
    assert httpx.get(active_url + "/elsewhere", timeout=5).status_code == 404
    for proc in (active, standby):
        assert "pooled endpoint" not in proc.output()
