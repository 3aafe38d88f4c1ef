"""The command line, run as real processes."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt

from tests.support import (
    SECRET,
    LiveServer,
    StartProcess,
    make_settings,
    open_ledger,
    service_env,
    taskledger,
    wait_for,
)


def test_token_is_signed_with_the_secret_and_carries_claims(tmp_path: Path) -> None:
    result = taskledger(
        "token", "alice", "--ttl", "15m", "--role", "auditor", env=service_env(None, tmp_path)
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["role"] == "auditor"
    assert 14 * 60 <= claims["exp"] - claims["iat"] <= 15 * 60


def test_token_refuses_a_bad_ttl(tmp_path: Path) -> None:
    result = taskledger("token", "alice", "--ttl", "soon", env=service_env(None, tmp_path))
    assert result.returncode == 2
    assert "ttl" in result.stderr.lower()


def test_token_refuses_a_ttl_the_service_would_refuse(tmp_path: Path) -> None:
    result = taskledger("token", "alice", "--ttl", "30d", env=service_env(None, tmp_path))
    assert result.returncode == 2
    assert "JWT_MAX_TTL_SECONDS" in result.stderr


def test_production_refuses_to_start_without_auth(tmp_path: Path) -> None:
    env = service_env(None, tmp_path, APP_ENV="production")
    del env["BETTER_AUTH_SECRET"]
    result = taskledger("serve", "--port", "1", env=env)
    assert result.returncode == 2
    assert "no auth mode" in result.stderr
    # Said as the service logs there: one JSON object, for the log collector.
    (line,) = result.stderr.strip().splitlines()
    said = json.loads(line)
    assert (said["level"], said["logger"]) == ("ERROR", "taskledger.cli")
    assert said["message"].startswith("refusing to start")


def test_a_refused_setting_is_said_in_the_format_of_the_profile(tmp_path: Path) -> None:
    for app_env, as_json in (("staging", True), ("development", False)):
        env = service_env(None, tmp_path, APP_ENV=app_env, DB_POOL_SIZE="many")
        result = taskledger("serve", "--port", "1", env=env)
        assert result.returncode == 2
        assert "db_pool_size" in result.stderr.lower()
        assert result.stderr.startswith("{") == as_json, app_env


def test_zero_configuration_serve_token_create_list(
    tmp_path: Path, live_server: LiveServer
) -> None:
    """The README's promise: nothing configured, then token + two calls work."""
    env = service_env(None, tmp_path / "data")
    del env["BETTER_AUTH_SECRET"]
    base_url, _ = live_server(env)
    token = taskledger("token", "alice", env=env).stdout.strip()
    assert (tmp_path / "data" / "dev-secret").stat().st_mode & 0o777 == 0o600
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(f"{base_url}/api/alice/tasks", json={"title": "Buy milk"}, headers=headers)
    assert created.status_code == 201, created.text
    listed = httpx.get(f"{base_url}/api/alice/tasks", headers=headers)
    assert [task["title"] for task in listed.json()] == ["Buy milk"]
    assert (tmp_path / "data" / "events.sqlite3").exists()


def test_projections_status_and_verify(tmp_path: Path, live_server: LiveServer) -> None:
    env = service_env(None, tmp_path)
    base_url, server = live_server(env)
    headers = {"Authorization": f"Bearer {taskledger('token', 'alice', env=env).stdout.strip()}"}
    for title in ("a", "b"):
        httpx.post(f"{base_url}/api/alice/tasks", json={"title": title}, headers=headers)
    status = taskledger("projections", "status", env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "live" in status.stdout and f":{server.proc.pid}" in status.stdout  # type: ignore[union-attr]
    server.stop()
    # Nobody projects any more: an operator's script tells it from the exit status.
    stopped = taskledger("projections", "status", env=env)
    assert stopped.returncode == 2, stopped.stdout + stopped.stderr
    assert "no projector holds the live build" in stopped.stderr
    verified = taskledger("projections", "verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "2 live rows, 2 replayed rows, 0 differences" in verified.stdout
    # Damage the read table behind the projector's back: verify names the task.
    with sqlite3.connect(tmp_path / "read.sqlite3") as db:
        db.execute("UPDATE task_view SET title = 'tampered' WHERE title = 'a'")
    damaged = taskledger("projections", "verify", env=env)
    assert damaged.returncode == 1
    assert "different" in damaged.stdout
    assert "tampered" in damaged.stdout


def test_history_replays_the_log_as_of_a_moment(tmp_path: Path) -> None:
    env = service_env(None, tmp_path)
    ledger = open_ledger(make_settings(None, tmp_path))
    task = ledger.add_task("alice", "first title", None).task
    assert task is not None
    ledger.toggle_task("alice", task.id)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    ledger.update_task("alice", task.id, title="second title")
    ledger.close()

    everything = taskledger("history", "alice", "--json", env=env)
    assert everything.returncode == 0, everything.stderr
    data = json.loads(everything.stdout)
    assert [entry["event"] for entry in data["entries"]] == [
        "Started",
        "TaskAdded",
        "TaskCompleted",
        "TaskEdited",
    ]
    assert data["tasks"][0]["title"] == "second title"

    then = taskledger("history", "alice", "--until", moment.isoformat(), "--json", env=env)
    earlier = json.loads(then.stdout)
    assert len(earlier["entries"]) == 3
    assert (earlier["tasks"][0]["title"], earlier["tasks"][0]["completed"]) == (
        "first title",
        True,
    )
    table = taskledger("history", "alice", env=env)
    assert "TaskEdited" in table.stdout
    assert taskledger("history", "alice", "--until", "yesterday", env=env).returncode == 2


def test_history_shows_task_contents_as_text_never_as_markup_or_terminal_codes(
    tmp_path: Path,
) -> None:
    titles = [
        "[/x] bye",
        "[link=https://evil.example]click me[/link]",
        "\x1b]8;;https://evil.example\x1b\\hyperlink\x1b]8;;\x1b\\",
        "\x1b[31mred\x1b[0m \u202eright-to-left",
    ]
    ledger = open_ledger(make_settings(None, tmp_path))
    for title in titles:
        ledger.add_task("mallory", title, "[bold]description[/bold]")
    ledger.close()
    result = taskledger("history", "mallory", env=service_env(None, tmp_path, COLUMNS="400"))
    assert result.returncode == 0, result.stderr
    assert "[/x] bye" in result.stdout
    assert "[link=https://evil.example]click me[/link]" in result.stdout
    assert "[bold]description[/bold]" in result.stdout
    assert "\\x1b]8;;https://evil.example" in result.stdout  # shown, escaped
    assert "\\u202eright-to-left" in result.stdout
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout


def test_verify_shows_task_contents_as_text_never_as_markup_or_terminal_codes(
    tmp_path: Path, live_server: LiveServer
) -> None:
    env = service_env(None, tmp_path, COLUMNS="400")
    base_url, server = live_server(env)
    headers = {"Authorization": f"Bearer {taskledger('token', 'mallory', env=env).stdout.strip()}"}
    title = "[link=https://evil.example]click me[/link] \x1b]8;;https://evil.example\x1b\\x"
    created = httpx.post(
        f"{base_url}/api/mallory/tasks", json={"title": title}, headers=headers, timeout=10
    )
    assert created.status_code == 201, created.text
    server.stop()
    # The read table altered by hand to what a user might have typed: verify shows both.
    with sqlite3.connect(tmp_path / "read.sqlite3") as db:
        db.execute("UPDATE task_view SET title = ?", ("[/x] bye \x1b[31mred\x1b[0m \u202eltr",))
    damaged = taskledger("projections", "verify", env=env)
    assert damaged.returncode == 1, damaged.stderr
    assert "different" in damaged.stdout
    assert "[/x] bye" in damaged.stdout  # rich would have refused it as markup: exit 1
    assert "[link=https://evil.example]click me[/link]" in damaged.stdout
    assert "\\x1b[31mred" in damaged.stdout and "\\u202eltr" in damaged.stdout  # escaped
    assert "\x1b" not in damaged.stdout and "\u202e" not in damaged.stdout


def test_access_log_lines_can_be_turned_off(tmp_path: Path, live_server: LiveServer) -> None:
    lines = {}
    for setting in ("true", "false"):
        env = service_env(None, tmp_path / setting, LOG_LEVEL="info", ACCESS_LOG=setting)
        base_url, server = live_server(env)
        assert httpx.get(f"{base_url}/healthz").status_code == 200
        server.stop()
        lines[setting] = [line for line in server.output().splitlines() if "GET /healthz" in line]
    assert len(lines["true"]) == 1
    assert lines["false"] == []


def test_history_pages_with_the_https_cursor_and_streams_every_page(tmp_path: Path) -> None:
    env = service_env(None, tmp_path)
    ledger = open_ledger(make_settings(None, tmp_path))
    for n in range(12):
        ledger.add_task("carol", f"task {n}", None)
    ledger.close()

    first = taskledger("history", "carol", "--limit", "5", "--json", env=env)
    assert first.returncode == 0, first.stderr
    page = json.loads(first.stdout)
    assert [entry["version"] for entry in page["entries"]] == [1, 2, 3, 4, 5]
    assert [entry["position"] for entry in page["entries"]] == [1, 2, 3, 4, 5]
    assert page["next_after"] == 5 and len(page["tasks"]) == 12
    assert "--after 5 --limit 5" in first.stderr
    last = json.loads(taskledger("history", "carol", "--after", "10", "--json", env=env).stdout)
    assert [entry["version"] for entry in last["entries"]] == [11, 12, 13]
    assert last["next_after"] is None

    every = taskledger("history", "carol", "--all", "--limit", "4", "--json", env=env)
    assert every.returncode == 0, every.stderr
    streamed = json.loads(every.stdout)
    assert [entry["version"] for entry in streamed["entries"]] == list(range(1, 14))
    assert streamed["next_after"] is None and "more events" not in every.stderr
    table = taskledger("history", "carol", "--all", "--limit", "5", env=env)
    assert table.stdout.count("history of carol") == 3
    assert "versions 11-13" in table.stdout and "task 11" in table.stdout
    assert taskledger("history", "carol", "--limit", "0", env=env).returncode == 2


def test_history_pages_stop_at_until(tmp_path: Path) -> None:
    env = service_env(None, tmp_path)
    ledger = open_ledger(make_settings(None, tmp_path))
    for n in range(4):
        ledger.add_task("dave", f"early {n}", None)
    moment = datetime.now(UTC)
    time.sleep(0.01)
    ledger.add_task("dave", "late", None)
    ledger.close()
    until = ("--until", moment.isoformat())
    first = taskledger("history", "dave", *until, "--limit", "3", "--json", env=env)
    assert json.loads(first.stdout)["next_after"] == 3
    rest = taskledger("history", "dave", *until, "--after", "3", "--json", env=env)
    page = json.loads(rest.stdout)
    assert [entry["version"] for entry in page["entries"]] == [4, 5]
    assert page["next_after"] is None and "more events" not in rest.stderr
    assert sorted(task["title"] for task in page["tasks"]) == [f"early {n}" for n in range(4)]


POOLED_HOST = "ep-test-pooler.us-east-2.aws.neon.tech"


def pooled_name(url: str) -> str:
    """``url``'s database under a Neon pooled endpoint's host name, still reached at the
    address it had (libpq connects to ``hostaddr`` and only names ``host``)."""
    parts = urlsplit(url)
    return parts._replace(
        netloc=f"{parts.username}@{POOLED_HOST}:{parts.port or 5432}",
        query=f"hostaddr={parts.hostname}",
    ).geturl()


def test_projecting_and_rebuilding_through_a_pooled_endpoint_are_warned_of(
    fresh_postgres_url: str, tmp_path: Path, start_process: StartProcess
) -> None:
    warning = f"DATABASE_URL's host {POOLED_HOST} is a pooled endpoint"
    env = service_env(pooled_name(fresh_postgres_url), tmp_path)
    # Said, not refused: each event is still applied once.
    projector = start_process(["project"], env, name="project")
    wait_for(lambda: "projector running" in projector.output(), 30, "the projector to start")
    assert warning in projector.output() and "PROJECTOR_DATABASE_URL" in projector.output()
    rebuilt = taskledger("projections", "rebuild", "--yes", env=env)
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert warning in rebuilt.stderr
