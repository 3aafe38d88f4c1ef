"""Checking a pooled PostgreSQL connection before use, without a round trip each time.

When the server ends a connection (a restart, an administrator, an idle timeout) it
says so and closes the socket, so a dead idle connection has something to read. Only
then is it pinged (and, failing, discarded by its pool). A quiet socket is taken as
is: a ping per checkout would cost every command and every projector batch a round
trip, and several per write.
"""

from __future__ import annotations

import select
from typing import Any

from psycopg_pool import ConnectionPool


def spoke_while_idle(connection: Any) -> bool:
    """Whether the idle ``connection`` (psycopg) has anything to read, or has hung up."""
    try:
        poller = select.poll()
        poller.register(connection.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except Exception:
        return True  # closed or unusable: let the ping find out


def check_if_spoke(connection: Any) -> None:
    """A psycopg_pool ``check``: raises for a connection the server has ended."""
    if spoke_while_idle(connection):
        ConnectionPool.check_connection(connection)
