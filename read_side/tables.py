"""Read tables: disposable views of the event log, shaped for listing a user's tasks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Index,
    MetaData,
    SmallInteger,
    Table,
    Text,
    Uuid,
    event,
    text,
)
from sqlalchemy.schema import SchemaItem
from sqlalchemy.sql.compiler import DDLCompiler
from sqlalchemy.sql.ddl import BaseDDLElement
from sqlalchemy.sql.elements import quoted_name
from sqlmodel import Field, SQLModel

log = logging.getLogger(__name__)

# The name of the projection that keeps these tables (its row in projection_position).
DEFAULT_PROJECTION = "tasks"

# What PostgreSQL's search index is made of: trigrams of the folded texts (pg_trgm),
# under the user (btree_gin). Both are contrib modules, trusted since PostgreSQL 13
# (the database's owner may create them) and offered by the managed services (Neon,
# RDS, Cloud SQL, Azure, Supabase). Where they cannot be created, the index is not
# made and a search reads the user's rows, as before read model 3: slower, same answer.
SEARCH_EXTENSIONS = ("pg_trgm", "btree_gin")


# (The signature is SQLAlchemy's DDLIfCallable.)
def _has_search_extensions(
    ddl: BaseDDLElement,
    target: SchemaItem | str,
    bind: Connection | None,
    tables: list[Table] | None = None,
    state: Any = None,
    *,
    dialect: Dialect,
    compiler: DDLCompiler | None = None,
    checkfirst: bool = False,
) -> bool:
    if bind is None:  # (DDL compiled without a database: as PostgreSQL would make it)
        return True
    # Not merely installed: the index names gin_trgm_ops, which must be on the search
    # path (an extension made in a schema of its own, as some services do, is not), and
    # takes btree_gin's default class for the user's column, found wherever it is.
    usable = bind.execute(_SEARCH_CLASSES).scalar_one()
    if not usable:
        log.warning(
            "%s: no search index (pg_trgm's gin_trgm_ops and btree_gin must be installed "
            "and on the search path): searches read the user's rows, as read model 2 did",
            getattr(target, "name", target),
        )
    return bool(usable)


_SEARCH_CLASSES = text(
    "SELECT EXISTS (SELECT FROM pg_opclass c JOIN pg_am a ON a.oid = c.opcmethod"
    " WHERE a.amname = 'gin' AND c.opcname = 'gin_trgm_ops' AND pg_opclass_is_visible(c.oid))"
    " AND EXISTS (SELECT FROM pg_opclass c JOIN pg_am a ON a.oid = c.opcmethod"
    " WHERE a.amname = 'gin' AND c.opcdefault AND c.opcintype = 'varchar'::regtype)"
)


# What PostgreSQL's sort indexes hold beside their keys (read model 4): which task, and
# the status filter's column, so that the pages of ``?status=`` are found there too.
PAGE_KEYS = ["id", "completed"]


class TaskView(SQLModel, table=True):
    """One row per live task. Deleted tasks are removed."""

    __tablename__ = "task_view"
    __table_args__ = (
        # Every listing filters on user_id, then sorts; ties keep creation order.
        # (SQLite's is ix_task_view_user_texts, below: the same, and the texts.)
        # PostgreSQL's sort indexes but the priority's hold each task's id and status
        # too (read model 4): a deep page's ids are found in the index alone, past the
        # tasks before it, and only its own rows are read (read_side.queries).
        Index(
            "ix_task_view_user_created",
            "user_id",
            "created_at",
            "created_seq",
            postgresql_include=PAGE_KEYS,
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_task_view_user_updated",
            "user_id",
            "updated_at",
            "created_seq",
            postgresql_include=PAGE_KEYS,
        ),
        # The plan's sorts, and their filters (due before/after, overdue, a priority).
        Index(
            "ix_task_view_user_due",
            "user_id",
            "due_at",
            "created_seq",
            postgresql_include=PAGE_KEYS,
        ),
        # (The narrowest index of a user's tasks, without PAGE_KEYS: what PostgreSQL
        # counts them in, 546 pages for 50,000 tasks against 836 with them.)
        Index("ix_task_view_user_priority", "user_id", "priority_rank", "created_seq"),
        # sort=title (read model 3): a walk of the user's titles, no sort of the rows.
        # SQLite's holds the descriptions too, for a search sorted by title (as the
        # texts index below does for the default order); PostgreSQL's cannot (below).
        Index(
            "ix_task_view_user_title",
            "user_id",
            "title_folded",
            "created_seq",
            postgresql_include=PAGE_KEYS,
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_task_view_user_title_texts",
            "user_id",
            "title_folded",
            "created_seq",
            "description_folded",
        ).ddl_if(dialect="sqlite"),
        # Search (read model 3). A search compares every one of the user's texts (a
        # substring, LIKE '%needle%'): SQLite reads them from this narrow index, in the
        # default listing's order, instead of from the rows (each with its document,
        # several times wider); a row is read only for a task that matches. It is
        # SQLite's index of the default listing too: beside another index of the same
        # order, the planner may walk that one and read every row. (Not in PostgreSQL:
        # a B-tree entry is limited to 2,704 bytes, which a description of 1,000
        # characters may pass; its trigram index below has no such limit.)
        Index(
            "ix_task_view_user_texts",
            "user_id",
            "created_at",
            "created_seq",
            "title_folded",
            "description_folded",
        ).ddl_if(dialect="sqlite"),
        # PostgreSQL's: the user's tasks holding the needle's trigrams, found in the
        # index; the rows found are compared again (LIKE), so the answer is exact.
        Index(
            "ix_task_view_search",
            "user_id",
            "title_folded",
            "description_folded",
            postgresql_using="gin",
            postgresql_ops={"title_folded": "gin_trgm_ops", "description_folded": "gin_trgm_ops"},
        ).ddl_if(dialect="postgresql", callable_=_has_search_extensions),
    )

    id: UUID = Field(primary_key=True)
    user_id: str = Field(max_length=128)
    title: str
    description: str | None = None
    # Title and description as searches compare them (read_side.folding). Declared
    # TEXT (read model 3), not VARCHAR: SQLite's planner takes a VARCHAR for a few
    # bytes, and would as soon count a user's tasks in an index of their texts as in
    # one a tenth as wide.
    title_folded: str = Field(sa_column=Column(Text, nullable=False))
    description_folded: str | None = Field(default=None, sa_column=Column(Text))
    completed: bool = False
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    version: int
    # Log position of the TaskAdded event: a total creation order, unlike timestamps.
    created_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The task as JSON, exactly as responses show it (read_side.documents).
    doc: str = Field(sa_column=Column(Text, nullable=False))
    # The plan (read model 2). The tags as a JSON array, in their order: the document's
    # (task_tag has a row per tag, for filters and counts, and no order).
    tags: str = Field(sa_column=Column(Text, nullable=False, server_default="[]"))
    # (The defaults are a task's with no plan, for rows written by hand.)
    priority: str = Field(sa_column=Column(Text, nullable=False, server_default="none"))
    # The priority's index in read_side.documents.PRIORITIES: what sort=priority orders by.
    priority_rank: int = Field(
        sa_column=Column(SmallInteger, nullable=False, server_default=text("0"))
    )
    due_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    remind_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    recurrence: str | None = Field(default=None, sa_column=Column(Text))
    recurs_from: UUID | None = Field(default=None, sa_column=Column(Uuid))


class TaskTag(SQLModel, table=True):
    """One row per tag of a live task: what tag filters and tag counts read. (The
    task's row holds its tags in their order; these rows have none.)"""

    __tablename__ = "task_tag"
    __table_args__ = (Index("ix_task_tag_user_tag", "user_id", "tag_folded"),)

    task_id: UUID = Field(primary_key=True)
    # The tag as filters compare it (read_side.folding): one per task, case aside.
    tag_folded: str = Field(primary_key=True)
    user_id: str = Field(max_length=128)
    # The tag as the task spells it.
    name: str
    # The task's created_seq: the spelling of the first task created with it shows
    # when two spellings of a tag are used as often.
    created_seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class TaskListOwner(SQLModel, table=True):
    """Which user a task-list stream belongs to: events after the first carry only the
    stream id, so the projector looks the user up here."""

    __tablename__ = "task_list_owner"

    list_id: UUID = Field(primary_key=True)
    user_id: str = Field(max_length=128)
    # Log position of the last event of this user's stream in the tables: while it
    # stands still, so do the user's rows, and a listing read before can be served again.
    last_position: int = Field(sa_column=Column(BigInteger, nullable=False, default=0))
    # The user's live tasks, and how many of them are completed (read model 5): the
    # total of a listing filtered by status at most is read here, with the page, instead
    # of counted in an index (8-12 ms for a 50,000-task user on PostgreSQL). They commit
    # with the rows they count, as the position does.
    # (No default: a writer that knows nothing of them, an older release's projector,
    # fails at once instead of leaving them wrong.)
    tasks: int = Field(sa_column=Column(BigInteger, nullable=False))
    completed_tasks: int = Field(sa_column=Column(BigInteger, nullable=False))


class ProjectionPosition(SQLModel, table=True):
    """How far through the log a projection has got. It commits with the rows it
    describes, which is what makes the projection exactly-once."""

    __tablename__ = "projection_position"

    name: str = Field(primary_key=True, max_length=64)
    position: int = Field(sa_column=Column(BigInteger, nullable=False, default=0))


# The Core tables behind the models, for the projector's and queries' SQL statements.
task_view: Table = TaskView.__table__  # type: ignore[attr-defined]
task_list_owner: Table = TaskListOwner.__table__  # type: ignore[attr-defined]
task_tag: Table = TaskTag.__table__  # type: ignore[attr-defined]
projection_position: Table = ProjectionPosition.__table__  # type: ignore[attr-defined]


# Before PostgreSQL makes a task table (a build's too: _renamed gives its copy this
# listener), the search index's extensions, where the database allows them. (Any error,
# a lost race of two processes included, leaves the index to _has_search_extensions.)
@event.listens_for(task_view, "before_create")
def _create_search_extensions(_table: Table, connection: Connection, **_: Any) -> None:
    if connection.dialect.name != "postgresql":
        return
    created = " ".join(f"CREATE EXTENSION IF NOT EXISTS {name};" for name in SEARCH_EXTENSIONS)
    connection.execute(
        text(
            f"DO $$ BEGIN {created} EXCEPTION WHEN OTHERS THEN"
            " RAISE NOTICE 'taskledger: no search index: %', SQLERRM; END $$"
        )
    )


@dataclass(frozen=True)
class ViewTables:
    """The tables one projection writes: the live ones, or a copy under other names
    (for checking the live ones against a replay, or rebuilding beside them)."""

    task: Table
    owner: Table
    tag: Table

    @classmethod
    def copy(cls, prefix: str) -> ViewTables:
        metadata = MetaData()
        return cls(
            task=_renamed(task_view, prefix, metadata),
            owner=_renamed(task_list_owner, prefix, metadata),
            tag=_renamed(task_tag, prefix, metadata),
        )

    @classmethod
    @cache
    def of_build(cls, suffix: str) -> ViewTables:
        """The tables of a build of the read model (``read_side.catalogue``): the
        models' tables with ``suffix`` after their names. One object per suffix, so
        that statements built for it can be kept."""
        if not suffix:
            return LIVE_TABLES
        metadata = MetaData()
        return cls(
            task=_renamed(task_view, "", metadata, suffix),
            owner=_renamed(task_list_owner, "", metadata, suffix),
            tag=_renamed(task_tag, "", metadata, suffix),
        )

    def all(self) -> tuple[Table, ...]:
        return (self.task, self.owner, self.tag)

    def create(self, engine: Engine) -> None:
        for table in self.all():
            table.create(engine, checkfirst=True)

    def drop(self, engine: Engine) -> None:
        for table in self.all():
            table.drop(engine, checkfirst=True)


def _renamed(table: Table, prefix: str, metadata: MetaData, suffix: str = "") -> Table:
    copy = table.to_metadata(metadata, name=prefix + table.name + suffix)
    if table is task_view:
        # (to_metadata() copies no listeners.)
        event.listen(copy, "before_create", _create_search_extensions)
    # to_metadata() copies an index's options but not the condition it is made on (a
    # backend's own index): each copy gets its original's.
    conditions = {index.name: index._ddl_if for index in table.indexes}
    for index in copy.indexes:
        index._ddl_if = conditions[index.name]
        # Index names are schema-wide in PostgreSQL: give the copies their own.
        index.name = quoted_name(f"{prefix}{index.name}{suffix}", quote=None)
    return copy


LIVE_TABLES = ViewTables(task=task_view, owner=task_list_owner, tag=task_tag)

# The columns whose PostgreSQL index (user_id, column, created_seq) holds PAGE_KEYS:
# the orders in which a deep page is found by its keys alone (read_side.queries).
SORTS_HOLDING_PAGE_KEYS = frozenset(
    list(index.columns)[1].name
    for index in task_view.indexes
    if index.dialect_options["postgresql"].get("include") == PAGE_KEYS
)
