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
# The document states what the validators refuse, so clients are not invited to send it:
# no NUL, and for titles something left once trimmed (of Unicode White_Space, which is
# what strip_whitespace removes). Patterns document only: the validators give the reasons.
_TRIMMED = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NO_NUL_PATTERN = r"^[^\x00]*$"
TITLE_PATTERN = rf"^[^\x00]*[^\x00{_TRIMMED}][^\x00]*$"
NoNulText = Annotated[str, Field(json_schema_extra={"pattern": NO_NUL_PATTERN})]
Title = Annotated[
    str,
    StringConstraints(
        strict=True, strip_whitespace=True, min_length=1, max_length=TITLE_MAX_LENGTH
    ),
    NoNul,
    Field(json_schema_extra={"pattern": TITLE_PATTERN}),
]
Description = Annotated[
    str | None, Field(max_length=DESCRIPTION_MAX_LENGTH, json_schema_extra={"nullable": True})
]
USER_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"


def never_null(schema: dict[str, Any]) -> None:
    """The documented form of a field that may be left out but not sent as null: only
    its non-null branch, so the document does not invite a null the API refuses."""
    branches = schema.pop("anyOf")
    schema.pop("default", None)
    schema.update(next(branch for branch in branches if branch.get("type") != "null"))


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskCreate(_Body):
    title: Title
    description: Annotated[
        NoNulText | None, Field(max_length=DESCRIPTION_MAX_LENGTH, strict=True), NoNul
    ] = None


class TaskUpdate(_Body):
    """Any of the fields; those left out stay as they are."""

    # An empty body changes nothing and is refused: the document says at least one field.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    title: Annotated[Title | None, Field(json_schema_extra=never_null)] = None
    description: Annotated[
        NoNulText | None, Field(max_length=DESCRIPTION_MAX_LENGTH, strict=True), NoNul
    ] = None
    completed: Annotated[StrictBool | None, Field(json_schema_extra=never_null)] = None

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


class ProblemError(BaseModel):
    field: str = Field(description='The field, parameter or header at fault ("body": all of it)')
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    # Present on 422 only, never null: documented as the list it always is when sent.
    errors: Annotated[list[ProblemError] | None, Field(json_schema_extra=never_null)] = None
