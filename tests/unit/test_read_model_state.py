"""A process's view of its read tables: a fault is logged once however often it is
reported, and a rebuild lowers the known position so that writes wait for it again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from api.read_your_writes import ProjectionProgress
from read_side.runtime.health import ReadModelHealth


def test_a_fault_is_logged_once_and_so_is_the_recovery(caplog: pytest.LogCaptureFixture) -> None:
    health = ReadModelHealth()
    with caplog.at_level(logging.WARNING, logger="read_side.runtime.health"):
        for _ in range(700):
            health.report("the log was restored")
        assert not health.serving and health.fault == "the log was restored"
        health.recovered()
        health.recovered()
    assert health.serving
    assert [record.getMessage() for record in caplog.records] == [
        "not serving the read tables: the log was restored",
        "serving the read tables again",
    ]


def test_after_a_reset_a_write_past_the_new_position_waits_again() -> None:
    progress = ProjectionProgress(lambda: 0, poll_interval=10)
    progress.advance(100)
    progress.reset(0)

    async def wait() -> bool:
        return await progress.wait(50, timeout=0.05)

    try:
        assert progress.position == 0
        assert asyncio.run(wait()) is False
        progress.reset(60)
        assert asyncio.run(wait()) is True
    finally:
        progress.close()
