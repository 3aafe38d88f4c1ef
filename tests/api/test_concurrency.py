"""Many clients, one user, two API processes on PostgreSQL: nothing lost, nothing doubled."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from read_side.runtime.engine import create_read_engine
from read_side.verify import verify
from tests.support import LiveServer, make_settings, mint, open_ledger, service_env

CLIENTS = 16
COMMANDS_PER_CLIENT = 200
USER = "shared_user"


@dataclass
class Outcome:
    created: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    statuses: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def run_client(base_urls: list[str], seed: int, outcome: Outcome, known: list[str]) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {mint(USER)}"}
    clients = [httpx.Client(base_url=url, headers=headers, timeout=30) for url in base_urls]
    try:
        for i in range(COMMANDS_PER_CLIENT):
            client = clients[i % len(clients)]
            roll = rng.random()
            with outcome.lock:
                target = rng.choice(known) if known else None
            if roll < 0.4 or target is None:
                response = client.post(f"/api/{USER}/tasks", json={"title": f"c{seed}-{i}"})
                if response.status_code == 201:
                    with outcome.lock:
                        outcome.created.add(response.json()["id"])
                        known.append(response.json()["id"])
            elif roll < 0.6:
                response = client.put(f"/api/{USER}/tasks/{target}", json={"title": f"e{i}"})
            elif roll < 0.8:
                response = client.patch(f"/api/{USER}/tasks/{target}/complete")
            else:
                response = client.delete(f"/api/{USER}/tasks/{target}")
                if response.status_code == 204:
                    with outcome.lock:
                        outcome.deleted.add(target)
            with outcome.lock:
                outcome.statuses.append(response.status_code)
    finally:
        for client in clients:
            client.close()


def metric(base_url: str, name: str, **labels: str) -> int:
    """The sum of the server's samples of taskledger_<name> that carry ``labels``."""
    text = httpx.get(f"{base_url}/metrics").text
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == f"taskledger_{name}" and labels.items() <= sample.labels.items()
        )
    )


@pytest.mark.slow
def test_sixteen_clients_two_processes_one_user(
    fresh_postgres_url: str,
    tmp_path: Path,
    live_server: LiveServer,
) -> None:
    # Small pools: two servers must fit in the database's connection limit beside
    # whatever else runs on it.
    env = service_env(fresh_postgres_url, tmp_path, DB_POOL_SIZE="4")
    with_projector, _ = live_server(env)
    without_projector, _ = live_server(env, "--no-projector")
    outcome = Outcome()
    known: list[str] = []
    threads = [
        threading.Thread(
            target=run_client, args=([with_projector, without_projector], seed, outcome, known)
        )
        for seed in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(outcome.statuses) == CLIENTS * COMMANDS_PER_CLIENT
    assert not [status for status in outcome.statuses if status >= 500]
    # 404: a task another client had just deleted. Nothing else may go wrong.
    assert set(outcome.statuses) <= {200, 201, 204, 404}

    settings = make_settings(fresh_postgres_url, tmp_path)
    ledger = open_ledger(settings)
    stream = ledger.task_list(USER)
    assert stream is not None
    in_log = {str(task.id) for task in stream.tasks()}
    assert in_log == outcome.created - outcome.deleted

    engine = create_read_engine(settings.storage.read_url)
    result = verify(ledger, engine)
    assert result.ok, result.differences[:5]
    assert result.position == ledger.last_position()
    engine.dispose()
    ledger.close()

    retried = sum(
        metric(url, "conflicts_retried_total") for url in (with_projector, without_projector)
    )
    saved = sum(
        metric(url, "commands_total", outcome="saved")
        for url in (with_projector, without_projector)
    )
    transactions = sum(
        metric(url, "save_transaction_commands_count")
        for url in (with_projector, without_projector)
    )
    print(
        f"\n{len(outcome.statuses)} commands, {saved} saved in {transactions} transactions, "
        f"{retried} conflicts retried"
    )
    assert 0 < transactions <= saved
