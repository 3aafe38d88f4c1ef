"""Request and response bodies, as the HTTP contract states them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)

from write_side import DESCRIPTION_MAX_LENGTH, TITLE_MAX_LENGTH


def refuse_nul(value: str | None) -> str | None:
    # PostgreSQL text cannot hold U+0000: one such title would stop the projector
    # for everybody, so it is refused at the door on every backend alike.
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL (U+0000) characters")
    return value


NoNul = AfterValidator(refuse_nul)
Title = Annotated[
    str,
    StringConstraints(
        strict=True, strip_whitespace=True, min_length=1, max_length=TITLE_MAX_LENGTH
    ),
    NoNul,
]
Description = Annotated[
    str | None, Field(max_length=DESCRIPTION_MAX_LENGTH, json_schema_extra={"nullable": True})
]
USER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskCreate(_Body):
    title: Title
    description: Annotated[
        str | None, Field(max_length=DESCRIPTION_MAX_LENGTH, strict=True), NoNul
    ] = None


class TaskUpdate(_Body):
    """Any of the fields; those left out stay as they are."""

    title: Title | None = None
    description: Annotated[
        str | None, Field(max_length=DESCRIPTION_MAX_LENGTH, strict=True), NoNul
    ] = None
    completed: StrictBool | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> TaskUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one of title, description, completed")
        if "title" in self.model_fields_set and self.title is None:
            raise ValueError("title cannot be null")
        if "completed" in self.model_fields_set and self.completed is None:
            raise ValueError("completed cannot be null")
        return self


class CompletionSet(_Body):
    completed: StrictBool


class TaskOut(BaseModel):
    id: UUID
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime = Field(description="RFC 3339, UTC")
    updated_at: datetime = Field(description="RFC 3339, UTC")
    version: int


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None
