"""Pages answered from memory alone (Services.kept_page): only while no batch has been
projected since they were read, and only where every batch is this process's own."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, update

from api.services import Services
from api.settings import Settings
from read_side.projector import Projector, projection_check
from read_side.queries import TaskFilter, list_id_of
from read_side.runtime.engine import create_read_engine, create_read_tables
from read_side.runtime.listings import ChangeCount
from tests.support import make_settings, wait_for
from write_side import TaskLedger, TaskList

SPEC = TaskFilter(sort="title", order="asc")


def test_the_change_count_is_unreadable_during_batches_and_moves_only_on_a_change() -> None:
    count = ChangeCount()
    start = count.stable("alice")
    assert start is not None
    batch = count.batch_begins()
    assert count.stable("alice") is None  # until the batch says whose streams it changes
    batch.tell(["alice"])
    batch.ended(changed=False)
    assert count.stable("alice") == start  # nothing applied: pages read before are good
    first, second = count.batch_begins(), count.batch_begins()  # a stopped worker's last
    first.tell(["alice"])  # batch, and the next worker's
    second.tell(["alice"])
    first.ended(changed=True)
    assert count.stable("alice") is None  # one is still under way
    second.ended(changed=False)
    moved = count.stable("alice")
    assert moved is not None and moved != start
    count.moved()
    assert count.stable("alice") not in {None, start, moved}


def test_another_users_batch_leaves_a_streams_count_where_it_was() -> None:
    count = ChangeCount()
    alice = count.stable("alice")
    batch = count.batch_begins()
    batch.tell(["bob"])
    assert count.stable("alice") == alice  # under way, but not on alice's stream
    assert count.stable("bob") is None
    batch.ended(changed=True)
    assert count.stable("alice") == alice
    # A batch that failed before telling its streams may have changed any of them.
    count.batch_begins().ended(changed=True)
    assert count.stable("alice") != alice


def test_forgotten_streams_still_move_on_every_change() -> None:
    count = ChangeCount(max_streams=2)
    before = {user: count.stable(user) for user in ("alice", "bob", "carol")}
    for user in ("alice", "bob", "carol"):  # alice is forgotten
        batch = count.batch_begins()
        batch.tell([user])
        batch.ended(changed=True)
    after = {user: count.stable(user) for user in ("alice", "bob", "carol")}
    assert all(after[user] != before[user] for user in after)
    dave = count.stable("dave")  # never changed: the floor, which moves as others go
    batch = count.batch_begins()
    batch.tell(["erin"])
    batch.ended(changed=True)  # bob is forgotten: the floor moves past him
    assert count.stable("dave") != dave
    assert count.stable("carol") == after["carol"]


@contextmanager
def _serving(settings: Settings) -> Iterator[Services]:
    """Services with their projector, started and serving."""
    running = Services(settings, with_projector=True)
    running.start()
    try:
        wait_for(lambda: running.health.serving and running.worker is not None, 10, "serving")
        yield running
    finally:
        running.close()


@pytest.fixture
def services(fresh_database: str | None, tmp_path: Path) -> Iterator[Services]:
    with _serving(make_settings(fresh_database, tmp_path)) as running:
        yield running


def _written(services: Services, title: str, user_id: str = "alice") -> None:
    change = services.ledger.add_task(user_id, title, None)
    wait_for(lambda: services.progress.position >= change.position, 10, "projected")


def _titles(page: tuple[str, int] | None) -> list[str]:
    assert page is not None
    return [part.split('"title":"')[1].split('"')[0] for part in page[0].split("},{")]


def test_a_kept_page_is_answered_from_memory_until_a_batch_is_projected(
    services: Services,
) -> None:
    _written(services, "a")
    wait_for(lambda: services.worker is not None and services.worker.is_leader, 10, "leading")
    page = services.list_page("alice", SPEC)
    if services.is_postgres:
        # Another process may lead the projection without this one knowing at once.
        assert services.kept_page("alice", SPEC) is None
        return
    assert services.kept_page("alice", SPEC) == page
    # Another user's batch leaves alice's page as it was (before, it sent every
    # listing to the database while anyone wrote: a small user's list p99 1.7 ->
    # 45.6 ms beside another user's writes, bench/big_users.py).
    _written(services, "elsewhere", "bob")
    assert services.kept_page("alice", SPEC) == page
    # Read-your-writes: once a write is projected, no page from before it is answered.
    _written(services, "b")
    assert services.kept_page("alice", SPEC) is None
    assert _titles(services.list_page("alice", SPEC)) == ["a", "b"]
    assert _titles(services.kept_page("alice", SPEC)) == ["a", "b"]
    # Not while the tables are not served, nor once this process no longer leads.
    services.health.report("a test says the tables are wrong")
    assert services.kept_page("alice", SPEC) is None
    services.health.recovered()
    assert services.kept_page("alice", SPEC) is not None
    assert services.worker is not None
    services.worker.stop()
    assert services.kept_page("alice", SPEC) is None


def test_the_first_batch_projected_into_new_tables_is_no_rebuild(
    fresh_database: str | None, tmp_path: Path
) -> None:
    # New tables have no check row (generation ""): the first batch writes one, with
    # the tables' first generation. The pages kept and the counts since stand.
    settings = make_settings(fresh_database, tmp_path, read_model_check_seconds=3600)
    # (Its check at start-up finds no generation.)
    with _serving(settings) as services:
        _written(services, "a")
        count = services.changes.stable("alice")
        assert count is not None
        services.check_read_model()  # finds the first generation
        assert services.changes.stable("alice") == count
        # A rebuild's new generation still voids them.
        with services.read_engine.begin() as conn:
            conn.execute(update(projection_check).values(generation="rebuilt"))
        services.check_read_model()
        assert services.changes.stable("alice") != count


def test_from_no_check_row_a_rebuild_lowers_the_position_writes_wait_on(
    fresh_database: str | None, tmp_path: Path
) -> None:
    # Tables with no check row (made before check rows, or restored without one), whose
    # log the leader then finds restored: its rebuild marks a generation of its own and
    # starts again from nothing. A write up to the old position waits for the rebuild
    # (found by a review: taken for the first batch's, the old position stood).
    settings = make_settings(fresh_database, tmp_path, read_model_check_seconds=3600)
    with _serving(settings) as writer:
        for title in "abc":
            _written(writer, title)
        projected = writer.progress.position
    replica = Services(settings, with_projector=False)
    with replica.read_engine.begin() as conn:
        conn.execute(delete(projection_check))
    replica.start()
    try:
        assert replica.progress.position == projected
        served = replica.served
        assert served is not None
        leader = Projector(
            replica.ledger, replica.read_engine, name=served.projection, tables=served.tables
        )
        leader.reset("a test restored the log")
        replica.check_read_model()
        assert replica.progress.position == 0
        assert not asyncio.run(replica.progress.wait(projected, 0.2))
    finally:
        replica.close()


def test_a_position_this_process_did_not_project_voids_the_kept_pages(
    services: Services,
) -> None:
    # A rebuild's last rounds, or another leader: the tables moved on without a batch
    # of this process's. Learnt of (by a poll, a notification), it voids the count
    # before any write waiting for that position is answered.
    if services.is_postgres:
        return
    _written(services, "a")
    services.list_page("alice", SPEC)
    assert services.kept_page("alice", SPEC) is not None
    services.progress.advance(services.progress.position + 1)
    assert services.kept_page("alice", SPEC) is None


def test_a_page_kept_on_standby_is_not_answered_from_memory_after_taking_the_lead(
    tmp_path: Path,
) -> None:
    """Two processes on one SQLite data dir: the standby keeps a page, the leader
    projects the user's next write and goes; the standby takes the lead. The page it
    kept lacks that write, and no batch of its own moved the user's count: taking the
    lead moves every count (found by an adversarial review of the per-stream count)."""
    settings = make_settings(None, tmp_path)
    leader = Services(settings, with_projector=True)
    leader.start()
    standby: Services | None = None
    try:
        wait_for(lambda: leader.worker is not None and leader.worker.is_leader, 10, "leading")
        _written(leader, "a")
        standby = Services(settings, with_projector=True)
        standby.start()
        wait_for(lambda: standby is not None and standby.health.serving, 10, "serving")
        assert _titles(standby.list_page("alice", SPEC)) == ["a"]  # kept, read from the DB
        _written(leader, "b")  # projected and acknowledged by the leader
        leader.close()
        wait_for(
            lambda: (
                standby is not None
                and standby.worker is not None
                and standby.served is not None
                and standby.worker.projects_alone(standby.served)
            ),
            15,
            "the standby leads",
        )
        kept = standby.kept_page("alice", SPEC)
        assert kept is None or _titles(kept) == ["a", "b"]
        assert _titles(standby.list_page("alice", SPEC)) == ["a", "b"]
    finally:
        leader.close()
        if standby is not None:
            standby.close()


def test_a_batch_tells_its_streams_as_uuids_whatever_the_store_keeps(
    tmp_path: Path,
) -> None:
    """With ORIGINATOR_ID_TYPE=text SQLite hands the ids back as text: the batch tells
    the decoded events' ids, the UUIDs a listing asks its count by."""
    settings = make_settings(None, tmp_path)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ledger = TaskLedger(env={**settings.storage.event_store_env, "ORIGINATOR_ID_TYPE": "text"})
    engine = create_read_engine(settings.storage.read_url)
    try:
        ledger.create_tables()
        create_read_tables(engine)
        count = ChangeCount()
        projector = Projector(ledger, engine, watcher=count)
        ledger.add_task("alice", "a", None)
        assert isinstance(ledger.recorder.select_notifications(1, 1)[0].originator_id, str)
        before = count.stable(list_id_of("alice"))
        assert projector.project_batch() > 0
        assert count.stable(list_id_of("alice")) != before
    finally:
        engine.dispose()
        ledger.close()


class _Seen:
    """A watcher that notes what it is told: the batch began (None), its streams, it
    ended (whether it changed anything)."""

    def __init__(self) -> None:
        self.batches: list[object] = []

    def batch_begins(self) -> _Seen:
        self.batches.append(None)
        return self

    def moved(self) -> None:
        self.batches.append("moved")

    def tell(self, streams: Iterable[Hashable]) -> None:
        self.batches.append(set(streams))

    def ended(self, *, changed: bool) -> None:
        self.batches.append(changed)


def test_an_idle_round_on_sqlite_takes_no_write_lock_and_leaves_kept_pages_good(
    fresh_settings: Settings, ledger: TaskLedger, engine: Engine
) -> None:
    # Each round of an idle projector committed a write transaction (a sync of the
    # WAL) and, under way, sent every listing to the database: list p99 106 -> 18 ms.
    seen = _Seen()
    projector = Projector(ledger, engine, watcher=seen)
    ledger.add_task("alice", "a", None)
    assert projector.project_batch() > 0
    alice = {TaskList.create_id("alice")}
    assert seen.batches == [None, alice, True]
    assert projector.project_batch() == 0
    on_sqlite = fresh_settings.storage.kind == "sqlite"
    assert seen.batches == [None, alice, True] + ([] if on_sqlite else [None, False])


def test_on_postgresql_a_kept_page_is_confirmed_by_the_users_position_read_on_the_loop(
    services: Services,
) -> None:
    if not services.is_postgres:
        assert services.positions is None
        return

    async def checks() -> None:
        _written(services, "a")
        assert await services.checked_page("alice", SPEC) is None  # nothing kept yet
        page = services.list_page("alice", SPEC)
        assert await services.checked_page("alice", SPEC) == page
        _written(services, "elsewhere", "bob")  # another user: alice's page stands
        assert await services.checked_page("alice", SPEC) == page
        _written(services, "b")
        assert await services.checked_page("alice", SPEC) is None
        assert _titles(services.list_page("alice", SPEC)) == ["a", "b"]
        assert _titles(await services.checked_page("alice", SPEC)) == ["a", "b"]
        services.health.report("a test says the tables are wrong")
        assert await services.checked_page("alice", SPEC) is None
        services.health.recovered()
        await services.aclose()

    asyncio.run(checks())
