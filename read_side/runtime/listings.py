"""Listings with a memory: a page read once is served again while the user's tasks
stand still.

Each request still asks the database one thing, the user's last projected position (a
primary-key lookup), and only on a change runs the listing query. The position is read
before the rows, so a stored page is never newer than the position it is filed under,
and a change always shows: across processes too, since the position comes from the
shared tables, not from this process's memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sqlalchemy import Connection

from read_side import queries
from read_side.queries import TaskFilter

Page = tuple[str, int]  # the JSON array of task documents, and the total that match


class CachedListings:
    def __init__(self, max_pages: int = 512) -> None:
        self._pages: OrderedDict[tuple[str, TaskFilter], tuple[int, Page]] = OrderedDict()
        self._max_pages = max_pages
        self._lock = threading.Lock()

    def page(self, conn: Connection, user_id: str, spec: TaskFilter) -> Page:
        position = queries.user_position(conn, user_id)
        key = (user_id, spec)
        with self._lock:
            stored = self._pages.get(key)
            if stored is not None and stored[0] == position:
                self._pages.move_to_end(key)
                return stored[1]
        documents, total = queries.list_tasks(conn, user_id, spec)
        page = (f"[{','.join(documents)}]", total)
        with self._lock:
            self._pages[key] = (position, page)
            self._pages.move_to_end(key)
            while len(self._pages) > self._max_pages:
                self._pages.popitem(last=False)
        return page
