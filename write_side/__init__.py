"""The write side: the task domain and the event-sourced application around it."""

from write_side.application import TaskLedger
from write_side.commands import Change, ConcurrencyExhausted
from write_side.domain import (
    DESCRIPTION_MAX_LENGTH,
    MAX_TAGS,
    NO_PLAN,
    PLAN_FIELDS,
    PRIORITIES,
    TAG_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    UNSET,
    USER_ID_MAX_LENGTH,
    USER_ID_PATTERN,
    Plan,
    Priority,
    Task,
    TaskList,
    TaskNotFound,
    TaskVersionMismatch,
    Unset,
)
from write_side.errors import InvalidTask, TaskLedgerError
from write_side.history import HistoryEntry, HistoryPage, PastTasks, VersionNotReached
from write_side.idempotency import IdempotencyKeyReused, RequestKey

__all__ = [
    "DESCRIPTION_MAX_LENGTH",
    "MAX_TAGS",
    "NO_PLAN",
    "PLAN_FIELDS",
    "PRIORITIES",
    "TAG_MAX_LENGTH",
    "TITLE_MAX_LENGTH",
    "UNSET",
    "USER_ID_MAX_LENGTH",
    "USER_ID_PATTERN",
    "Change",
    "ConcurrencyExhausted",
    "HistoryEntry",
    "HistoryPage",
    "IdempotencyKeyReused",
    "InvalidTask",
    "PastTasks",
    "Plan",
    "Priority",
    "RequestKey",
    "Task",
    "TaskLedger",
    "TaskLedgerError",
    "TaskList",
    "TaskNotFound",
    "TaskVersionMismatch",
    "Unset",
    "VersionNotReached",
]
