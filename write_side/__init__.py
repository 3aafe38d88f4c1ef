"""The write side: the task domain and the event-sourced application around it."""

from write_side.application import UNSET, Change, ConcurrencyExhausted, TaskLedger, Unset
from write_side.domain import (
    DESCRIPTION_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    InvalidTask,
    Task,
    TaskLedgerError,
    TaskList,
    TaskNotFound,
    TaskVersionMismatch,
)
from write_side.idempotency import IdempotencyKeyReused, RequestKey

__all__ = [
    "DESCRIPTION_MAX_LENGTH",
    "TITLE_MAX_LENGTH",
    "UNSET",
    "Change",
    "ConcurrencyExhausted",
    "IdempotencyKeyReused",
    "InvalidTask",
    "RequestKey",
    "Task",
    "TaskLedger",
    "TaskLedgerError",
    "TaskList",
    "TaskNotFound",
    "TaskVersionMismatch",
    "Unset",
]
