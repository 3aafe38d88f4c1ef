"""Versioned read models, built blue/green: a rebuild beside the live build, the switch,
a second rebuild refused, an interrupted one forgotten, tables from before versions
adopted and rebuilt, a rolling upgrade between two code versions, a stall noticed."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, inspect, select, text

from api.services import ReadModelUnavailable, Services, leadership_for
from api.settings import Settings
from infrastructure.leadership import Leadership
from read_side import catalogue
from read_side.projector import ProjectionFenced, Projector, read_position
from read_side.queries import TaskFilter
from read_side.rebuild import RebuildRefused, rebuild
from read_side.tables import LIVE_TABLES, projection_position, task_view
from read_side.verify import verify
from read_side.versions import READ_MODEL_VERSION
from tests.support import make_settings, wait_for
from write_side import TaskLedger


def _titles(engine: Engine, build: catalogue.Build, user: str) -> list[str]:
    task = build.tables.task
    with engine.connect() as conn:
        rows = conn.execute(select(task.c.title).where(task.c.user_id == user))
        return sorted(row.title for row in rows)


def _live(engine: Engine) -> catalogue.Build:
    with engine.connect() as conn:
        live = catalogue.live_build(conn)
    assert live is not None
    return live


def _leadership(settings: Settings) -> Callable[[str], Leadership]:
    return lambda name: leadership_for(settings, name)


def test_a_first_start_makes_build_0_of_this_version_live(engine: Engine) -> None:
    live = _live(engine)
    assert (live.id, live.version, live.state) == (0, READ_MODEL_VERSION, "live")
    assert live.tables is LIVE_TABLES and live.projection == "tasks"


def test_a_rebuild_is_made_beside_the_live_build_then_switched_to_and_the_old_dropped(
    fresh_settings: Settings, ledger: TaskLedger, engine: Engine
) -> None:
    for n in range(30):
        ledger.add_task("alice", f"task {n}", None)
    Projector(ledger, engine).catch_up()
    seen_during: list[tuple[int, list[str]]] = []

    def during(position: int, log_end: int) -> None:
        # The live build serves everything while the new one is being made.
        seen_during.append((position, _titles(engine, _live(engine), "alice")))

    result = rebuild(
        ledger,
        engine,
        _leadership(fresh_settings),
        version=READ_MODEL_VERSION,
        batch_size=7,
        grace_seconds=0,
        on_progress=during,
    )
    assert [position for position, _ in seen_during] == sorted(p for p, _ in seen_during)
    assert all(len(titles) == 30 for _, titles in seen_during)
    live = _live(engine)
    assert live == result.build and live.id == 1 and live.suffix == f"_v{READ_MODEL_VERSION}_b1"
    assert result.previous is not None and result.previous.id == 0
    assert len(_titles(engine, live, "alice")) == 30
    with engine.connect() as conn:
        assert [build.id for build in catalogue.builds(conn)] == [1]
        assert not inspect(conn).has_table("task_view")
        names = {row.name for row in conn.execute(select(projection_position.c.name))}
    assert names == {live.projection}
    checked = verify(ledger, engine, tables=live.tables, name=live.projection)
    assert checked.ok and checked.replayed_rows == 30


def test_after_the_switch_a_rebuild_projects_its_build_only_while_nobody_else_leads_it(
    fresh_settings: Settings, ledger: TaskLedger, engine: Engine
) -> None:
    # A process that leads the live build takes every batch on its tables for its own
    # (the kept pages of api/services.py): the rebuild's last rounds must not add any.
    ledger.add_task("alice", "before", None)
    Projector(ledger, engine).catch_up()
    held: list[Leadership] = []

    def step(message: str) -> None:
        if " is live at position " in message:
            lead = leadership_for(fresh_settings, _live(engine).projection)
            assert lead.acquire()
            held.append(lead)
            ledger.add_task("alice", "after the switch", None)

    try:
        rebuild(
            ledger,
            engine,
            _leadership(fresh_settings),
            version=READ_MODEL_VERSION,
            grace_seconds=1.0,
            on_step=step,
        )
        live = _live(engine)
        assert _titles(engine, live, "alice") == ["before"]  # left to the leader
    finally:
        for lead in held:
            lead.release()
    Projector(ledger, engine, name=live.projection, tables=live.tables).catch_up()
    assert _titles(engine, live, "alice") == ["after the switch", "before"]


def test_a_second_rebuild_while_one_is_under_way_refuses(
    fresh_settings: Settings, ledger: TaskLedger, engine: Engine
) -> None:
    builder = leadership_for(fresh_settings, catalogue.builder_lock_name())
    assert builder.acquire()
    try:
        with pytest.raises(RebuildRefused, match="under way"):
            rebuild(ledger, engine, _leadership(fresh_settings), version=1)
    finally:
        builder.release()
    assert _live(engine).id == 0


def test_an_interrupted_rebuild_leaves_the_live_build_and_the_next_one_starts_clean(
    fresh_settings: Settings, ledger: TaskLedger, engine: Engine
) -> None:
    for n in range(20):
        ledger.add_task("alice", f"task {n}", None)
    Projector(ledger, engine).catch_up()

    def interrupt(position: int, log_end: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rebuild(
            ledger,
            engine,
            _leadership(fresh_settings),
            version=READ_MODEL_VERSION,
            batch_size=5,
            on_progress=interrupt,
        )
    with engine.connect() as conn:
        assert [(b.id, b.state) for b in catalogue.builds(conn)] == [(0, "live")]
        assert not inspect(conn).has_table(f"task_view_v{READ_MODEL_VERSION}_b1")
    # As a process killed outright leaves it: a build under way, its maker gone.
    with engine.begin() as conn:
        abandoned = catalogue.start_build(conn, READ_MODEL_VERSION)
    Projector(ledger, engine, name=abandoned.projection, tables=abandoned.tables).project_batch()
    result = rebuild(
        ledger, engine, _leadership(fresh_settings), version=READ_MODEL_VERSION, grace_seconds=0
    )
    assert result.build.id == abandoned.id + 1
    with engine.connect() as conn:
        assert [(b.id, b.state) for b in catalogue.builds(conn)] == [(result.build.id, "live")]
        assert not inspect(conn).has_table(abandoned.tables.task.name)
    assert len(_titles(engine, result.build, "alice")) == 20


@contextmanager
def _running(settings: Settings, version: int | None = None) -> Iterator[Services]:
    services = Services(settings, with_projector=True, read_model_version=version)
    services.start()
    try:
        yield services
    finally:
        services.close()


def _listed(services: Services, user: str) -> int:
    tables = services.require_read_model().tables
    with services.reading() as conn:
        return services.listings.page(conn, tables, user, _all())[1]


def _all() -> TaskFilter:
    return TaskFilter(limit=1000)


def test_a_rolling_upgrade_builds_the_new_version_beside_the_old_one_which_serves_on(
    fresh_database: str | None, tmp_path: Path
) -> None:
    settings = make_settings(fresh_database, tmp_path, read_model_check_seconds=0.2)
    with _running(settings) as old:
        for n in range(200):
            old.ledger.add_task("alice", f"task {n}", None)
        wait_for(lambda: old.projected_position() == old.ledger.last_position(), 20, "projected")
        new = Services(settings, with_projector=True, read_model_version=READ_MODEL_VERSION + 1)
        new.start()
        try:
            # The new process builds its version; until it is live it says so, and the
            # old process serves complete lists from the old build meanwhile.
            ready = new.readiness()
            assert ready["status"] == "building", ready
            assert _listed(old, "alice") == 200
            old.ledger.add_task("alice", "written during the upgrade", None)

            def switched() -> bool:
                return _live(old.read_engine).version == READ_MODEL_VERSION + 1

            wait_for(switched, 30, "the new version to go live")
            wait_for(lambda: new.readiness()["status"] == "ready", 10, "the new one ready")
            # The old process follows the switch (the tables have the columns it reads).
            wait_for(lambda: old.served == _live(old.read_engine), 5, "the old one to follow")
            wait_for(lambda: _listed(old, "alice") == 201, 5, "the old one to list it all")
            assert _listed(new, "alice") == 201
            keeper = old.worker
            assert keeper is not None
            wait_for(lambda: keeper.role == "aside", 5, "the old projector to stand aside")
            # The build before is dropped once every process has had time to follow.
            wait_for(
                lambda: not inspect(old.read_engine).has_table("task_view"),
                20,
                "the old build to be dropped",
            )
        finally:
            new.close()


def _made_before_versions(
    fresh_database: str | None, tmp_path: Path, ledger: TaskLedger, *changes: str
) -> Settings:
    """A task projected, then the tables as a release before versions left them: no
    catalogue (and ``changes``, SQL statements)."""
    settings = make_settings(fresh_database, tmp_path, read_model_check_seconds=0.2)
    ledger.add_task("alice", "kept in the log", None)
    with _running(settings) as before:
        # (A new read database over a log is served once built from it.)
        wait_for(lambda: before.health.serving and _listed(before, "alice") == 1, 10, "projected")
    with before.read_engine.begin() as conn:
        for statement in ("DROP TABLE read_model_build", *changes):
            conn.execute(text(statement))
    return settings


def test_read_tables_made_new_over_a_log_are_not_served_until_built_from_it(
    fresh_database: str | None, tmp_path: Path, ledger: TaskLedger
) -> None:
    # A new read database, or a read file set aside as damaged and made again by any
    # thread or process: served at once, its empty tables would list no tasks.
    for n in range(3):
        ledger.add_task("alice", f"task {n}", None)
    settings = make_settings(fresh_database, tmp_path, read_model_check_seconds=0.2)
    services = Services(settings, with_projector=False)
    services.start()
    try:
        with pytest.raises(ReadModelUnavailable, match="made new over a log of"):
            services.require_read_model()
        assert services.readiness()["status"] == "unavailable"
    finally:
        services.close()
    with _running(settings) as services:
        wait_for(lambda: services.health.serving, 10, "served once built")
        assert _listed(services, "alice") == 3


def test_tables_made_before_versions_are_adopted_and_rebuilt_in_the_background(
    fresh_database: str | None, tmp_path: Path, ledger: TaskLedger
) -> None:
    settings = _made_before_versions(fresh_database, tmp_path, ledger)
    with _running(settings) as after:
        wait_for(
            lambda: _live(after.read_engine).version == READ_MODEL_VERSION, 20, "the new build"
        )
        assert _live(after.read_engine).id == 1
        wait_for(lambda: after.served == _live(after.read_engine), 5, "served")
        assert _listed(after, "alice") == 1


def test_old_tables_this_code_cannot_read_are_not_served_while_its_version_is_built(
    fresh_database: str | None, tmp_path: Path, ledger: TaskLedger
) -> None:
    # (Tables of a release before versions had no index on the column: SQLite drops no
    # column an index names.)
    title_indexes = [index.name for index in task_view.indexes if "title_folded" in index.columns]
    settings = _made_before_versions(
        fresh_database,
        tmp_path,
        ledger,
        *(f"DROP INDEX IF EXISTS {index}" for index in title_indexes),
        "ALTER TABLE task_view DROP COLUMN title_folded",
    )
    services = Services(settings, with_projector=False)
    services.start()
    try:
        with pytest.raises(ReadModelUnavailable, match="title_folded"):
            services.require_read_model()
        assert services.readiness()["status"] == "building"
    finally:
        services.close()
    with _running(settings) as services:
        wait_for(lambda: _live(services.read_engine).id == 1, 20, "version built")
        wait_for(lambda: services.health.serving, 5, "served")
        assert _listed(services, "alice") == 1


def test_a_stalled_projection_is_told_apart_from_a_moving_one(
    fresh_database: str | None, tmp_path: Path
) -> None:
    settings = make_settings(
        fresh_database, tmp_path, projection_stall_seconds=1, read_model_check_seconds=0.2
    )
    with _running(settings) as services:
        services.ledger.add_task("alice", "first", None)
        wait_for(lambda: services.readiness()["status"] == "ready", 10, "ready")
        live = services.served
        assert live is not None
        blocker = _block_projection(services.read_engine, live.projection)
        try:
            services.ledger.add_task("alice", "stuck", None)
            wait_for(lambda: services.readiness()["status"] == "stalled", 15, "stalled")
            ready = services.readiness()
            assert "writes are still accepted" in ready["reason"]
            report = dict((s.build.id, s.state) for s, _ in services.projection_report())
            assert report[live.id] == "stalled"
        finally:
            blocker.set()
        wait_for(lambda: services.readiness()["status"] == "ready", 40, "recovered")


def _block_projection(engine: Engine, projection: str) -> threading.Event:
    """Hold the projection's position row (PostgreSQL) or the read database's write
    lock (SQLite) until the event is set: the projector's transaction waits on it."""
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("UPDATE projection_position SET position = position")
            else:
                conn.execute(
                    select(projection_position.c.position)
                    .where(projection_position.c.name == projection)
                    .with_for_update()
                )
            held.set()
            release.wait(60)
            conn.rollback()

    threading.Thread(target=hold, daemon=True).start()
    held.wait(10)
    return release


def test_the_position_of_each_build_is_its_own(ledger: TaskLedger, engine: Engine) -> None:
    ledger.add_task("alice", "one", None)
    Projector(ledger, engine).catch_up()
    with engine.begin() as conn:
        build = catalogue.start_build(conn, READ_MODEL_VERSION)
    with engine.connect() as conn:
        assert read_position(conn, build.projection) == 0
        assert read_position(conn, "tasks") == ledger.last_position()


def test_a_build_under_way_fails_over_to_a_standby_which_carries_it_on(
    fresh_database: str | None, tmp_path: Path
) -> None:
    settings = make_settings(
        fresh_database, tmp_path, read_model_check_seconds=0.2, rebuild_batch_size=5
    )
    with _running(settings) as old:
        for n in range(1500):
            old.ledger.add_task(f"user-{n % 30}", f"task {n}", None)
        wait_for(lambda: old.projected_position() == old.ledger.last_position(), 30, "projected")
        next_version = READ_MODEL_VERSION + 1
        first, second = (
            Services(settings, with_projector=True, read_model_version=next_version)
            for _ in range(2)
        )
        first.start()
        second.start()
        try:
            keepers = [first.worker, second.worker]

            def building() -> bool:
                return any(k is not None and k.role == "building" and k.is_leader for k in keepers)

            wait_for(building, 20, "one of them to build")
            leader, standby = (first, second) if first.worker.is_leader else (second, first)  # type: ignore[union-attr]
            with old.read_engine.connect() as conn:
                under_way = catalogue.building_build(conn)
                assert under_way is not None
                reached = read_position(conn, under_way.projection)
            assert reached < old.ledger.last_position()
            leader.close()
            # The standby takes the builder's lock and carries the same build on.
            wait_for(lambda: _live(old.read_engine) == under_way, 30, "the build to go live")
            keeper = standby.worker
            assert keeper is not None
            wait_for(lambda: keeper.role == "live", 5, "the standby to project it as live")
            wait_for(lambda: standby.health.serving and standby.served == under_way, 5, "served")
            assert _listed(standby, "user-3") == 50
        finally:
            first.close()
            second.close()


def test_a_switch_waits_for_the_new_build_and_fences_the_old_one(
    ledger: TaskLedger, engine: Engine
) -> None:
    ledger.add_task("alice", "one", None)
    live = _live(engine)
    old = Projector(
        ledger, engine, name=live.projection, tables=live.tables, fence=catalogue.retired(live)
    )
    old.catch_up()
    with engine.begin() as conn:
        build = catalogue.start_build(conn, READ_MODEL_VERSION)
    new = Projector(ledger, engine, name=build.projection, tables=build.tables, anchored=True)
    with engine.begin() as conn:
        # Behind the live build: readers moved to it would miss acknowledged writes.
        assert not catalogue.switch(conn, build)
    new.catch_up()
    with engine.begin() as conn:
        assert catalogue.switch(conn, build)
    switched_at = old.position()
    ledger.add_task("alice", "two", None)
    # Not one more batch on the retired build: nobody can have seen "two" from it.
    with pytest.raises(ProjectionFenced, match="retired"):
        old.project_batch()
    assert old.position() == switched_at
    new.catch_up()
    assert _titles(engine, build, "alice") == ["one", "two"]


@pytest.mark.parametrize("version", [3, READ_MODEL_VERSION])
def test_a_deep_page_is_found_by_its_keys_only_in_a_build_whose_indexes_hold_them(
    fresh_postgres_url: str, tmp_path: Path, version: int
) -> None:
    """While a newer process builds its version beside the one served, it serves the
    older build's tables: their sort indexes hold no ids (before read model 4), so a
    deep page is read from the rows there, as that version's code read it."""
    settings = make_settings(fresh_postgres_url, tmp_path)
    statements: list[str] = []
    with _running(settings, version) as services:
        services.ledger.add_task("alice", "a task", None)
        last = services.ledger.last_position()
        wait_for(lambda: services.projected_position() == last, 20, "projected")

        def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
            statements.append(statement)

        event.listen(services.query_engine, "before_cursor_execute", seen)
        services.list_page("alice", TaskFilter(sort="title", offset=600))
        event.remove(services.query_engine, "before_cursor_execute", seen)
    paged = [s for s in statements if "ORDER BY" in s]
    assert paged, statements
    by_keys = any(re.search(r"JOIN \(SELECT", s) for s in paged)
    assert by_keys == (version >= 4), paged
