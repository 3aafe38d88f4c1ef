"""Start-up steps (the event store's tables, the snapshots' thinning) are tried again
when a connection is not had within the pool's short wait, or another process is
creating the same tables: a busy machine starting several processes at once must not
fail one of them."""

from __future__ import annotations

import pytest
from eventsourcing.persistence import IntegrityError, OperationalError
from psycopg_pool import PoolTimeout

from write_side.store import saving


@pytest.mark.parametrize(
    "error", [PoolTimeout("couldn't get a connection"), OperationalError(), IntegrityError()]
)
def test_a_step_that_fails_for_a_moment_is_tried_again(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("write_side.store.saving.time.sleep", lambda _: None)
    tries: list[int] = []

    def step() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise error

    saving._at_start_up(step)
    assert len(tries) == 3


def test_a_step_that_keeps_failing_fails_at_last(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("write_side.store.saving.time.sleep", lambda _: None)
    tries: list[int] = []

    def step() -> None:
        tries.append(1)
        raise PoolTimeout("couldn't get a connection")

    with pytest.raises(PoolTimeout):
        saving._at_start_up(step, attempts=4)
    assert len(tries) == 4


def test_other_errors_are_not_tried_again() -> None:
    tries: list[int] = []

    def step() -> None:
        tries.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        saving._at_start_up(step)
    assert tries == [1]
