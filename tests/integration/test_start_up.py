"""Building the services touches nothing; start-up is the one step that creates the
data folder, the tables and the development secret. Operator tools never drop."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg

from api.services import Services
from tests.support import ROOT, make_settings, service_env


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def test_building_the_services_creates_no_file_and_no_table(
    fresh_database: str | None, tmp_path: Path
) -> None:
    url = fresh_database
    data_dir = tmp_path / "data"
    settings = make_settings(url, data_dir, better_auth_secret=None)
    services = Services(settings)
    services.close()
    assert not data_dir.exists()
    if url is not None:
        assert _tables(url) == set()


def test_start_up_creates_the_folder_the_tables_and_the_development_secret(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    services = Services(make_settings(None, data_dir, better_auth_secret=None))
    services.start()
    try:
        assert (data_dir / "dev-secret").exists()
        for name in ("events.sqlite3", "read.sqlite3"):
            with sqlite3.connect(data_dir / name) as conn:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            assert tables, name
    finally:
        services.close()


def test_projections_status_leaves_outdated_read_tables_alone(tmp_path: Path) -> None:
    read_file = tmp_path / "read.sqlite3"
    with sqlite3.connect(read_file) as conn:  # as an older version left them: no doc column
        conn.execute("CREATE TABLE task_view (id VARCHAR(36) PRIMARY KEY, title TEXT)")
        conn.execute("INSERT INTO task_view VALUES ('t1', 'kept')")
    subprocess.run(
        [sys.executable, "-m", "api", "projections", "status"],
        env=service_env(None, tmp_path),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    with sqlite3.connect(read_file) as conn:
        assert conn.execute("SELECT id, title FROM task_view").fetchall() == [("t1", "kept")]
