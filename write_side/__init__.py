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

__all__ = [
    "DESCRIPTION_MAX_LENGTH",
    "TITLE_MAX_LENGTH",
    "UNSET",
    "Change",
    "ConcurrencyExhausted",
    "InvalidTask",
    "Task",
    "TaskLedger",
    "TaskLedgerError",
    "TaskList",
    "TaskNotFound",
    "TaskVersionMismatch",
    "Unset",
]
