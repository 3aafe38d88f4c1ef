"""The domain's own errors (a module of their own: the rules' helpers raise them too)."""

from __future__ import annotations


class TaskLedgerError(Exception):
    """Base of the domain's own errors."""


class InvalidTask(TaskLedgerError, ValueError):
    """A field that breaks the task rules; ``field`` names it ("body": several)."""

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field
