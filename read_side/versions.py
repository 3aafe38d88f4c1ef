"""Which version of the read model this code builds and reads.

The version changes whenever the read tables *or the projection's logic* change: a
process whose code declares a version that is not live builds it beside the live one
(``read_side.catalogue``) instead of touching the tables others serve. A change of
tables is caught by a test (tests/unit/test_read_model_version.py): the tables' shape
must be the one recorded for the declared version. A change of logic alone (what an
event does to a row) has no shape to catch: bump the version by hand then.
"""

from __future__ import annotations

import hashlib

from read_side.tables import LIVE_TABLES, ViewTables

READ_MODEL_VERSION = 5

# The shape of the tables each version was released with. Never edit a recorded
# shape: a changed table is a new version, with its shape added here.
SHAPES = {
    1: "7d1aa6864bc7d9c4",
    # The plan: priority, due and reminder moments, recurrence; tags in task_tag.
    2: "f0408a782a5fa67d",
    # Indexes for a big user's title sort and search (SQLite: the texts in a narrow
    # index; PostgreSQL: a trigram index).
    3: "fc7e6e78ebc5b0d2",
    # PostgreSQL's sort indexes hold the task's id and status: deep pages found there.
    4: "687f6151148bf52b",
    # Each user's count of live and completed tasks, kept in task_list_owner.
    5: "8af0fc7cfa1a22e4",
}

# The first version whose PostgreSQL sort indexes hold read_side.tables.PAGE_KEYS: an
# older build, served while this code builds its own beside it, has its pages read from
# the rows (found by keys its indexes lack, a deep page took 2-3 times as long).
PAGE_KEYS_SINCE = 4


def holds_page_keys(version: int) -> bool:
    return version >= PAGE_KEYS_SINCE


# The first version whose task_list_owner keeps each user's task counts: an older
# build's listings count their rows.
TASK_COUNTS_SINCE = 5


def holds_task_counts(version: int) -> bool:
    return version >= TASK_COUNTS_SINCE


# Columns this code reads only from a build of the version that added them, or a later
# one: a build of an older version lacks them and is read without them (the holds_*
# checks above), so it can be served while this version is built beside it.
COLUMNS_SINCE = {
    ("task_list_owner", "tasks"): TASK_COUNTS_SINCE,
    ("task_list_owner", "completed_tasks"): TASK_COUNTS_SINCE,
}


def reads_column(version: int, table: str, column: str) -> bool:
    """Whether this code reads ``column`` of (live) ``table`` from a build of ``version``."""
    return version >= COLUMNS_SINCE.get((table, column), 0)


# Tables made before versions existed (their shape and logic are whatever the release
# that made them had): adopted as this version, and rebuilt in the background.
UNVERSIONED = 0


def shape_of(tables: ViewTables = LIVE_TABLES) -> str:
    """A digest of the tables' columns (name, type, nullability, key) and indexes: what
    a version's tables are, whatever a build names them."""
    parts = []
    for table in tables.all():
        parts.append("table")
        for column in table.columns:
            parts.append(
                f"  {column.name} {column.type!r} null={column.nullable} key={column.primary_key}"
            )
        for index in sorted(table.indexes, key=lambda index: [c.name for c in index.columns]):
            columns = ",".join(column.name for column in index.columns)
            parts.append(f"  index ({columns}) unique={index.unique}")
            # (Said only where there are some: the shapes recorded before stay theirs.)
            if included := index.dialect_options["postgresql"]["include"]:
                parts.append(f"    include ({','.join(map(str, included))})")
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()
