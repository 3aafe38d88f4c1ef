"""Request and response bodies, as the HTTP contract states them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, cast

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    Strict,
    StrictBool,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from write_side.domain import (
    DESCRIPTION_MAX_LENGTH,
    MAX_TAGS,
    PLAN_FIELDS,
    PRIORITIES,
    TAG_MAX_LENGTH,
    TITLE_MAX_LENGTH,
    Plan,
    Priority,
    check_description,
    check_priority,
    check_text,
    clean_tags,
    clean_title,
)
from write_side.recurrence import RULE_MAX_LENGTH, parse_rule

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


def _in_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+01:00 is an RFC 3339 instant that no UTC clock can show.
        raise ValueError("is outside the years that can be held in UTC") from None


Moment = Annotated[
    AwareDatetime | None,
    BeforeValidator(lambda value: value if value is None else _rfc3339(value)),
    AfterValidator(_in_utc),
]


def _priority(priority: str | None) -> Priority:
    # Some frontends send null for "no particular priority".
    return "none" if priority is None else check_priority(priority)


PriorityField = Annotated[
    Annotated[str, Strict(), Field(json_schema_extra={"enum": list(PRIORITIES)})] | None,
    AfterValidator(_priority),
    Field(description="none (the default; null means it too), low, medium, high or urgent"),
]

_TAG_LABEL = {
    "type": "string",
    "minLength": 1,
    "maxLength": TAG_MAX_LENGTH,
    "pattern": TITLE_PATTERN,
}


def _tag_label(tag: Any) -> Any:
    # Frontends send a tag as its label, or as an object that holds it as "name".
    if isinstance(tag, dict) and "name" in tag:
        return tag["name"]
    return tag


TagLabel = Annotated[
    str,
    Strict(),
    BeforeValidator(_tag_label),
    WithJsonSchema(
        {
            "anyOf": [
                _TAG_LABEL,
                {"type": "object", "properties": {"name": _TAG_LABEL}, "required": ["name"]},
            ]
        }
    ),
]


def _tags(tags: list[str] | None) -> list[str]:
    return [] if tags is None else list(clean_tags(tags))


Tags = Annotated[
    Annotated[list[TagLabel], Field(max_length=MAX_TAGS)] | None,
    AfterValidator(_tags),
    Field(
        description=f"At most {MAX_TAGS} labels, each trimmed and 1 to {TAG_MAX_LENGTH} "
        "characters, as strings or as objects with a name; a label equal to an earlier one "
        "but for case is dropped (the first spelling is kept). null means none"
    ),
]

_DAY = "(MON|TUE|WED|THU|FRI|SAT|SUN)"
_RDAY = "(MO|TU|WE|TH|FR|SA|SU)"
_MONTHDAY = "([1-9]|[12][0-9]|3[01])"
# Strides up to 99 (each frequency takes more: write_side.recurrence.MAX_INTERVALS),
# and with one, days of the month up to the 28th (a stride of whole years and a 30th
# is refused: that month may have none).
_INTERVAL = "(;INTERVAL=[1-9][0-9]?)?"
_ANY_MONTHDAY = "([1-9]|1[0-9]|2[0-8])"
_COUNT = "(;COUNT=[1-9][0-9]{0,3})?"
# The common forms only (every text it matches is accepted): UNTIL, WKST, TZID and
# their combinations are accepted too, but no pattern short of a parser describes them.
RECURRENCE_PATTERN = (
    f"^(DAILY|WEEKLY|MONTHLY|YEARLY|WEEKLY:{_DAY}(,{_DAY}){{0,6}}|MONTHLY:{_MONTHDAY}"
    f"|(RRULE:)?FREQ=(DAILY|WEEKLY|MONTHLY|YEARLY){_INTERVAL}{_COUNT}"
    f"|(RRULE:)?FREQ=WEEKLY{_INTERVAL};BYDAY={_RDAY}(,{_RDAY}){{0,6}}{_COUNT}"
    f"|(RRULE:)?FREQ=MONTHLY;BYMONTHDAY=-?{_MONTHDAY}{_COUNT}"
    f"|(RRULE:)?FREQ=MONTHLY{_INTERVAL};BYMONTHDAY=-?{_ANY_MONTHDAY}{_COUNT})$"
)


def _rule(rule: str | None) -> str | None:
    return None if rule is None else parse_rule(rule)


Recurrence = Annotated[
    Annotated[
        str,
        Strict(),
        Field(json_schema_extra={"maxLength": RULE_MAX_LENGTH, "pattern": RECURRENCE_PATTERN}),
    ]
    | None,
    AfterValidator(_rule),
    Field(
        description="An RFC 5545 RRULE (FREQ=DAILY|WEEKLY|MONTHLY|YEARLY with INTERVAL, BYDAY, "
        "BYMONTHDAY, COUNT, UNTIL, WKST, and TZID=<IANA zone> to step in that zone's wall "
        "clock), or a short form: DAILY, WEEKLY:MON,WED, MONTHLY:15, YEARLY. Needs due_at. "
        "null: the task does not recur"
    ),
]
DueAt = Annotated[Moment, Field(description="RFC 3339 with its offset, stored in UTC; null: none")]
RemindAt = Annotated[
    Moment,
    Field(
        description="RFC 3339 with its offset, stored in UTC; null: none (allowed without due_at)"
    ),
]

# The spellings of the plan's fields that frontends written against other backends send.
BODY_ALIASES = {"due_date": "due_at", "reminder_at": "remind_at", "recurrence_rule": "recurrence"}
# A rule steps from the due date: the document says so, as far as a body alone can.
_RULE_NEEDS_DUE_AT: list[JsonValue] = [
    {"properties": {"recurrence": {"type": "null"}}},
    {"required": ["due_at"], "properties": {"due_at": {"type": "string"}}},
]
_ALIASES_DOC = (
    "due_date, reminder_at and recurrence_rule are accepted as other names for due_at, "
    "remind_at and recurrence (sent under both names, they must be the same)."
)


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
    # timestamps, version, recurs_from). Those are ignored; the path and the token alone
    # say whose task it is.
    model_config = ConfigDict(extra="ignore")


class _Planned(_Body):
    """The plan's fields, under their names or their aliases (BODY_ALIASES)."""

    # Only ever set when the alias and its name differ, to be refused (naming the
    # alias); hidden from the document, which names each field once.
    due_date: SkipJsonSchema[Any] = None
    reminder_at: SkipJsonSchema[Any] = None
    recurrence_rule: SkipJsonSchema[Any] = None

    @model_validator(mode="before")
    @classmethod
    def _canonical_names(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not BODY_ALIASES.keys() & data.keys():
            return data
        data = dict(data)
        for alias, name in BODY_ALIASES.items():
            if alias in data and (name not in data or data[name] == data[alias]):
                data[name] = data.pop(alias)
        return data

    @field_validator(*BODY_ALIASES, mode="before")
    @classmethod
    def _differs(cls, _: Any, info: ValidationInfo) -> Any:
        alias = str(info.field_name)
        raise ValueError(f"{alias} is another name for {BODY_ALIASES[alias]}, and they differ")

    def plan_sent(self) -> dict[str, Any]:
        """The plan's fields the body sent, by name (for TaskList.update)."""
        return {name: getattr(self, name) for name in PLAN_FIELDS if name in self.model_fields_set}


class TaskCreate(_Planned):
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"anyOf": _RULE_NEEDS_DUE_AT, "description": _ALIASES_DOC},
    )

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
    priority: PriorityField = "none"
    tags: Tags = []
    due_at: DueAt = None
    remind_at: RemindAt = None
    recurrence: Recurrence = None

    def plan(self) -> Plan:
        # The validators made null priority "none" and null tags [].
        priority, tags = cast(Priority, self.priority), tuple(self.tags or ())
        return Plan(priority, tags, self.due_at, self.remind_at, self.recurrence)


class TaskUpdate(_Planned):
    """Any of the fields; those left out stay as they are."""

    # An empty body changes nothing and is refused: the document says at least one field.
    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "minProperties": 1,
            "anyOf": _RULE_NEEDS_DUE_AT,
            "description": "Any of the fields; those left out stay as they are. " + _ALIASES_DOC,
        },
    )

    title: Annotated[Title | None, Field(json_schema_extra=never_null)] = None
    description: Description = None
    completed: Annotated[StrictBool | None, Field(json_schema_extra=never_null)] = None
    priority: PriorityField = None
    tags: Tags = None
    due_at: DueAt = None
    remind_at: RemindAt = None
    recurrence: Recurrence = None

    @model_validator(mode="after")
    def _something_to_change(self) -> TaskUpdate:
        if not self.model_fields_set:
            raise ValueError(f"give at least one of {', '.join(UPDATABLE)}")
        if "title" in self.model_fields_set and self.title is None:
            raise ValueError("title cannot be null")
        if "completed" in self.model_fields_set and self.completed is None:
            raise ValueError("completed cannot be null")
        return self


UPDATABLE = ("title", "description", "completed", *PLAN_FIELDS)


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


class TagCount(BaseModel):
    name: str = Field(description="The tag, as most of its tasks spell it")
    count: int = Field(ge=0, description="The user's tasks that carry it")


class PriorityCounts(BaseModel):
    none: int = Field(ge=0)
    low: int = Field(ge=0)
    medium: int = Field(ge=0)
    high: int = Field(ge=0)
    urgent: int = Field(ge=0)


class StatsOut(BaseModel):
    """The user's tasks counted from the read tables; "today" and "this week" (Monday to
    Sunday) are the calendar's in the zone asked for."""

    total: int = Field(ge=0)
    completed: int = Field(ge=0)
    pending: int = Field(ge=0)
    overdue: int = Field(ge=0, description="Pending and due before now")
    due_today: int = Field(ge=0, description="Pending and due today")
    due_this_week: int = Field(ge=0, description="Pending and due this week")
    completion_rate: float = Field(
        ge=0, le=1, description="completed / total, rounded to 4 places (0 with no tasks)"
    )
    by_priority: PriorityCounts
    top_tags: list[TagCount] = Field(description="The most used tags, most first (at most 5)")
