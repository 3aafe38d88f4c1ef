"""Integration tier: checking read tables against the log, on both backends, while the
log is written to and projected."""

from __future__ import annotations

import io
import multiprocessing
import threading
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

from rich.console import Console
from sqlalchemy import Engine, delete, select, update

from api.progress import replay_progress
from read_side.projector import Projector
from read_side.runtime.engine import create_read_engine
from read_side.tables import ViewTables, projection_position, task_list_owner, task_view
from read_side.verify import Difference, Verification, verify
from tests.support import Background, in_threads, make_settings, open_ledger, wait_for
from write_side import Task, TaskLedger

# Enough rows that reading them takes far longer than the projector's commits are apart
# (and than the pauses of the load, up to 0.2 s), seeded by many users at once: their
# commands share transactions.
SEEDED = 20000
USERS = 200
COMMANDS_PER_SECOND = 200
VERIFY_WITHIN = 60.0


def add(ledger: TaskLedger, user_id: str, title: str, description: str | None = None) -> Task:
    task = ledger.add_task(user_id, title, description).task
    assert task is not None
    return task


def position_names(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {row[0] for row in conn.execute(select(projection_position.c.name))}


def write(ledger: TaskLedger, i: int) -> int:
    """Add a task and change some of them: one to four commands, which it returns.
    Twenty tasks a user: the streams stay short, and so do the commands."""
    user = f"writer{i // 20}"
    task = add(ledger, user, f"w{i}", "to be changed")
    if i % 3 == 0:
        ledger.toggle_task(user, task.id)
    if i % 4 == 0:
        ledger.update_task(user, task.id, title=f"w{i}!", description=None)
    if i % 5 == 0:
        ledger.delete_task(user, task.id)
    return 1 + (i % 3 == 0) + (i % 4 == 0) + (i % 5 == 0)


def serve_load(
    database_url: str | None, data_dir: Path, stopping: EventType, commands: Synchronized[int]
) -> None:
    """The service under load, in a process of its own as beside an operator's verify
    (in the test's process, verify's Python work would hold the GIL and slow the load
    down): commands through the ledger, COMMANDS_PER_SECOND, in one thread, and a
    projector applying them as they come, in another. One event per batch: the
    position moves with every event, as it does when a projector keeps up with a
    steady load (a larger batch would apply several together here)."""
    settings = make_settings(database_url, data_dir)
    ledger = open_ledger(settings)
    engine = create_read_engine(settings.storage.read_url)
    projector = Projector(ledger, engine, batch_size=1)

    def project(stop: threading.Event) -> None:
        while not stop.is_set():
            if not projector.project_batch():
                stop.wait(0.001)

    projecting = Background(project)
    projecting.start()
    try:
        i, started = 0, time.monotonic()
        while not stopping.is_set():
            done = write(ledger, i)
            with commands.get_lock():
                commands.value += done
            i += 1
            ahead = commands.value / COMMANDS_PER_SECOND - (time.monotonic() - started)
            if ahead > 0:
                stopping.wait(ahead)
    finally:
        assert projecting.stop(timeout=10) == []
        engine.dispose()
        ledger.close()


def test_verify_finishes_at_one_position_while_the_log_is_written(
    fresh_database: str | None, tmp_path: Path, ledger: TaskLedger, engine: Engine
) -> None:
    def seed(user: int) -> None:
        for i in range(SEEDED // USERS):
            add(ledger, f"user{user}", f"seeded {i}", "d" * (i % 50))

    assert in_threads(USERS, seed) == [None] * USERS
    Projector(ledger, engine).catch_up()
    seeded_at = ledger.last_position()
    spawn = multiprocessing.get_context("spawn")
    stopping, commands = spawn.Event(), spawn.Value("q", 0)
    load = spawn.Process(target=serve_load, args=(fresh_database, tmp_path, stopping, commands))
    load.start()
    outcome: list[Verification | BaseException] = []

    def run_verify() -> None:
        try:
            outcome.append(verify(ledger, engine))
        except BaseException as error:  # pragma: no cover - reported below
            outcome.append(error)

    try:
        wait_for(lambda: commands.value > 100, 30, "the load to start")
        commands_before, started = commands.value, time.monotonic()
        verifying = threading.Thread(target=run_verify, daemon=True)
        verifying.start()
        verifying.join(VERIFY_WITHIN)
        took = time.monotonic() - started
        rate = (commands.value - commands_before) / took
        assert not verifying.is_alive(), f"verify still running after {VERIFY_WITHIN}s"
    finally:
        stopping.set()
        load.join(30)
        if load.is_alive():  # pragma: no cover - reported below
            load.kill()
    assert load.exitcode == 0
    assert rate >= 60, f"only {rate:.0f} commands/s during verify"
    [result] = outcome
    assert isinstance(result, Verification), result
    assert result.ok, result.differences[:5]
    assert result.position > seeded_at
    assert result.live_rows == result.replayed_rows >= SEEDED
    assert position_names(engine) == {"tasks"}


def test_verify_reports_the_field_of_a_row_altered_by_hand(
    ledger: TaskLedger, engine: Engine
) -> None:
    altered = add(ledger, "alice", "milk", "two litres")
    add(ledger, "alice", "bread")
    Projector(ledger, engine).catch_up()
    with engine.begin() as conn:
        conn.execute(
            update(task_view).where(task_view.c.id == altered.id).values(description="ten litres")
        )
    result = verify(ledger, engine)
    assert not result.ok
    assert result.differences == [
        Difference(str(altered.id), "different", {"description": ("ten litres", "two litres")})
    ]
    assert (result.live_rows, result.replayed_rows) == (2, 2)


def test_verify_reports_a_users_stored_counts_that_are_not_their_rows(
    ledger: TaskLedger, engine: Engine
) -> None:
    done = add(ledger, "alice", "milk")
    add(ledger, "alice", "bread")
    add(ledger, "bob", "post")
    ledger.toggle_task("alice", done.id)
    Projector(ledger, engine).catch_up()
    assert verify(ledger, engine).ok
    with engine.begin() as conn:
        conn.execute(
            update(task_list_owner)
            .where(task_list_owner.c.user_id == "alice")
            .values(tasks=3, completed_tasks=1)
        )
        conn.execute(delete(task_view).where(task_view.c.user_id == "bob"))
    result = verify(ledger, engine)
    # (Bob's row gone: missing from the table, and one task fewer than his count.)
    assert result.differences[1:] == [
        Difference("user alice", "miscounted", {"tasks": (3, 2), "completed_tasks": (1, 1)}),
        Difference("user bob", "miscounted", {"tasks": (1, 0), "completed_tasks": (0, 0)}),
    ]
    assert result.differences[0].kind == "missing"
    # An older build's tables keep no counts: only their rows are compared.
    assert [d.kind for d in verify(ledger, engine, counts=False).differences] == ["missing"]


def test_verify_checks_a_copied_set_of_tables_at_its_own_position(
    ledger: TaskLedger, engine: Engine
) -> None:
    first = add(ledger, "alice", "first")
    Projector(ledger, engine).catch_up()
    live_at = ledger.last_position()
    # The copy is projected further than the live tables, under a position row of its own.
    second = add(ledger, "alice", "second")
    add(ledger, "bob", "third")
    copy = ViewTables.copy("v2_")
    copy.create(engine)
    Projector(ledger, engine, name="tasks_v2", tables=copy).catch_up()

    result = verify(ledger, engine, tables=copy, name="tasks_v2")
    assert result.ok, result.differences
    assert (result.position, result.live_rows) == (ledger.last_position(), 3)
    live = verify(ledger, engine)
    assert live.ok, live.differences
    assert (live.position, live.live_rows) == (live_at, 1)

    # Damage to the copy is found in the copy, and not in the live tables.
    with engine.begin() as conn:
        conn.execute(update(copy.task).where(copy.task.c.id == second.id).values(completed=True))
    damaged = verify(ledger, engine, tables=copy, name="tasks_v2")
    assert damaged.differences == [
        Difference(str(second.id), "different", {"completed": (True, False)}),
        # (Completed by hand: not in the user's stored count.)
        Difference("user alice", "miscounted", {"tasks": (2, 2), "completed_tasks": (0, 1)}),
    ]
    assert verify(ledger, engine).ok
    assert str(first.id) not in {difference.task_id for difference in damaged.differences}
    assert position_names(engine) == {"tasks", "tasks_v2"}


def test_verify_reports_progress_after_each_batch_up_to_the_total(
    ledger: TaskLedger, engine: Engine
) -> None:
    for i in range(1100):  # and 20 Started events: three batches of 500 at most
        ledger.add_task(f"user{i % 20}", f"t{i}", None)
    Projector(ledger, engine).catch_up()
    calls: list[tuple[int, int]] = []
    result = verify(
        ledger, engine, on_progress=lambda done, total: calls.append((done, total)), batch_size=500
    )
    assert result.ok
    done = [call[0] for call in calls]
    assert len(calls) == 3
    assert done == sorted(set(done))
    assert {call[1] for call in calls} == {result.position}
    assert done[-1] == result.position == ledger.last_position()


def test_verify_reads_the_position_of_an_empty_table(ledger: TaskLedger, engine: Engine) -> None:
    calls: list[tuple[int, int]] = []
    nothing = verify(ledger, engine, on_progress=lambda *call: calls.append(call))
    assert (nothing.ok, nothing.position, nothing.live_rows) == (True, 0, 0)
    assert calls == [(0, 0)]
    # Every task deleted: no row, but the position is still read.
    task = add(ledger, "alice", "gone")
    ledger.delete_task("alice", task.id)
    Projector(ledger, engine).catch_up()
    result = verify(ledger, engine)
    assert result.ok
    assert (result.position, result.live_rows, result.replayed_rows) == (3, 0, 0)


def test_the_progress_bar_shows_a_last_line_off_a_terminal(
    ledger: TaskLedger, engine: Engine
) -> None:
    for i in range(30):
        add(ledger, "alice", f"t{i}")
    Projector(ledger, engine).catch_up()
    piped = io.StringIO()
    with replay_progress("verifying", console=Console(file=piped)) as advance:
        assert verify(ledger, engine, on_progress=advance).ok
    assert piped.getvalue().startswith("verifying: 31/31 events in ")
    assert piped.getvalue().count("\n") == 1
    shown = io.StringIO()
    terminal = Console(file=shown, force_terminal=True, width=120)
    with replay_progress("verifying", console=terminal) as advance:
        assert verify(ledger, engine, on_progress=advance).ok
    assert "31/31" in shown.getvalue()
    assert "events/s" in shown.getvalue()
