"""Request and response bodies, as the HTTP contract states them."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    model_validator,
)

from write_side.domain import (
    DESCRIPTION_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    check_description,
    check_text,
    clean_title,
)

# The rules are the domain's (write_side.domain): the validators call them, so a body
# is refused at the door for the reasons the aggregate would refuse it. The patterns
# only document them, so that clients are not invited to send what is refused: no NUL,
# and for titles something left once trimmed (of Unicode White_Space, which is what
# str.strip removes).
_TRIMMED = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NO_NUL_PATTERN = r"^[^\x00]*$"
TITLE_PATTERN = rf"^[^\x00]*[^\x00{_TRIMMED}][^\x00]*$"
Title = Annotated[
    str,
    Strict(),
    AfterValidator(clean_title),
    Field(
        json_schema_extra={"minLength": 1, "maxLength": TITLE_MAX_LENGTH, "pattern": TITLE_PATTERN}
    ),
]
NoNulText = Annotated[str, Field(json_schema_extra={"pattern": NO_NUL_PATTERN})]
# Lengths are the domain's, counted in NFC (see check_text): documented here, checked there.
Description = Annotated[
    Annotated[NoNulText, Field(json_schema_extra={"maxLength": DESCRIPTION_MAX_LENGTH})] | None,
    Field(strict=True),
    AfterValidator(check_description),
]
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: Any) -> Any:
    # Pydantic alone would also take a number (Unix time) or a date without a time.
    if not isinstance(value, str) or not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with its offset, e.g. 2026-11-28T09:30:00Z")
    return value


Rfc3339 = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
SearchText = Annotated[NoNulText, AfterValidator(lambda text: check_text(text, "q"))]


def never_null(schema: dict[str, Any]) -> None:
    """The documented form of a field that may be left out but not sent as null: only
    its non-null branch, so the document does not invite a null the API refuses."""
    branches = schema.pop("anyOf")
    schema.pop("default", None)
    schema.update(next(branch for branch in branches if branch.get("type") != "null"))


def _open(completed: bool) -> bool:
    if completed:
        raise ValueError("a new task is open: create it, then complete it")
    return completed


class _Body(BaseModel):
    # Liberal in what it accepts: frontends written against other backends of this API
    # send fields it does not know, or echo the whole task back on PUT (id, user_id,
    # timestamps, version). Those are ignored; the path and the token alone say whose
    # task it is.
    model_config = ConfigDict(extra="ignore")


class TaskCreate(_Body):
    title: Title
    description: Description = None
    # Frontends send the whole form, ``completed: false`` included. A task created
    # done would be a second event: refused rather than silently dropped.
    completed: Annotated[
        StrictBool,
        Field(
            description="A new task is open: only false is accepted",
            json_schema_extra={"const": False},
        ),
        AfterValidator(_open),
    ] = False


class TaskUpdate(_Body):
    """Any of the fields; those left out stay as they are."""

    # An empty body changes nothing and is refused: the document says at least one field.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"minProperties": 1})

    title: Annotated[Title | None, Field(json_schema_extra=never_null)] = None
    description: Description = None
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
