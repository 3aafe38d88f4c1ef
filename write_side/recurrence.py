"""Recurrence rules: RFC 5545 RRULEs, checked when set and stepped when a task is done.

A rule is stored as its canonical text (``FREQ=WEEKLY;BYDAY=MO,WE``). The parts that
are understood are FREQ (DAILY, WEEKLY, MONTHLY, YEARLY), INTERVAL, BYDAY, BYMONTHDAY,
COUNT, UNTIL and WKST, and one of our own: ``TZID=<IANA zone>``, the zone whose wall
clock the rule steps in (a task due at 09:00 in Paris stays at 09:00 across a change
of daylight-saving time); without it the rule steps in UTC. Parsing and stepping are
python-dateutil's ``rrule``; this module only checks what dateutil lets through (it
takes ``INTERVAL=0``, and then never returns, or ``BYMONTHDAY=32``) and names the
part at fault.

A series is carried from task to task: each occurrence holds the rule, and completing
it adds the next one. ``COUNT=n`` counts the task that holds it and the n-1 after it:
the next occurrence's rule holds ``COUNT=n-1``, and a task holding ``COUNT=1`` is the
last. ``UNTIL`` ends the series at the last occurrence not after it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, tzinfo
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from dateutil import parser as dateparser
from dateutil.rrule import rrule, rrulestr

from write_side.errors import InvalidTask

FREQUENCIES = ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")
RULE_MAX_LENGTH = 500
# The most periods between occurrences: a MONTHLY or YEARLY rule steps through a
# calendar that repeats, and a stride near its cycle could stop meeting its days.
MAX_INTERVALS = {"DAILY": 1000, "WEEKLY": 520, "MONTHLY": 120, "YEARLY": 100}
# The furthest position BYDAY may give (1MO, -2FR): one every month or year has.
_POSITIONS = {"MONTHLY": 4, "YEARLY": 52}
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,6}")
MAX_COUNT = 10_000

_DAYS = {"MON": "MO", "TUE": "TU", "WED": "WE", "THU": "TH", "FRI": "FR", "SAT": "SA", "SUN": "SU"}
_SIMPLE = re.compile(r"^(DAILY|WEEKLY|MONTHLY|YEARLY)(?::(.*))?$")
_WEEKDAY = re.compile(r"^([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)$")
_PARTS = ("FREQ", "INTERVAL", "BYDAY", "BYMONTHDAY", "COUNT", "UNTIL", "WKST", "TZID")


class InvalidRecurrence(InvalidTask):
    """A rule that cannot be used; the message names the part at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(f"recurrence: {message}", field="recurrence")


@dataclass(frozen=True, slots=True)
class Occurrence:
    """The next occurrence of a series: when it is due, and the rule it carries on."""

    due_at: datetime
    rule: str


def _simple_form(text: str) -> str | None:
    """The RRULE meant by the short forms frontends send: ``DAILY``, ``WEEKLY``,
    ``WEEKLY:MON,WED``, ``MONTHLY``, ``MONTHLY:15``, ``YEARLY``; else None."""
    match = _SIMPLE.match(text)
    if match is None:
        return None
    freq, argument = match.groups()
    if argument is None:
        return f"FREQ={freq}"
    if freq == "WEEKLY":
        days = [day.strip() for day in argument.split(",")]
        codes = [_DAYS.get(day, day) for day in days]
        return f"FREQ=WEEKLY;BYDAY={','.join(codes)}"
    if freq == "MONTHLY":
        return f"FREQ=MONTHLY;BYMONTHDAY={argument.strip()}"
    raise InvalidRecurrence(f"{freq} takes no argument (got {argument!r})")


def parse_rule(text: str) -> str:
    """The canonical text of a rule (upper case, parts in the order given), or
    InvalidRecurrence naming the part at fault."""
    if len(text) > RULE_MAX_LENGTH:
        raise InvalidRecurrence(f"must be at most {RULE_MAX_LENGTH} characters")
    cleaned = text.strip().upper()
    if cleaned.startswith("RRULE:"):
        cleaned = cleaned[len("RRULE:") :]
    cleaned = _simple_form(cleaned) or cleaned
    parts: dict[str, str] = {}
    for part in filter(None, cleaned.split(";")):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not value:
            raise InvalidRecurrence(f"{part!r} is not NAME=VALUE")
        if name not in _PARTS:
            raise InvalidRecurrence(f"{name} is not supported (use {', '.join(_PARTS)})")
        if name in parts:
            raise InvalidRecurrence(f"{name} is given twice")
        parts[name] = value
    if "FREQ" not in parts:
        raise InvalidRecurrence("FREQ is required (DAILY, WEEKLY, MONTHLY or YEARLY)")
    _check_parts(parts)
    if "TZID" in parts:
        # As the zone database spells it (the rule was upper-cased): shown so, and
        # found at once each time the series steps.
        parts["TZID"] = _zone(parts["TZID"]).key
    rule = ";".join(f"{name}={value}" for name, value in parts.items())
    # dateutil has the last word on what it can step.
    _stepper(rule, datetime(2000, 1, 1, tzinfo=UTC))
    return rule


def _check_parts(parts: dict[str, str]) -> None:
    """Check each part, and write its numbers as plain whole numbers (``+5`` and
    ``05`` are rewritten, digits other than ASCII refused)."""
    freq = parts["FREQ"]
    if freq not in FREQUENCIES:
        raise InvalidRecurrence(f"FREQ must be one of {', '.join(FREQUENCIES)}")
    if "INTERVAL" in parts:
        interval = _bounded(parts["INTERVAL"], "INTERVAL", 1, MAX_INTERVALS[freq])
        parts["INTERVAL"] = str(interval)
    if "COUNT" in parts:
        parts["COUNT"] = str(_bounded(parts["COUNT"], "COUNT", 1, MAX_COUNT))
        if "UNTIL" in parts:
            raise InvalidRecurrence("COUNT and UNTIL cannot both be given")
    if "BYMONTHDAY" in parts:
        parts["BYMONTHDAY"] = _month_days(parts)
    if "BYDAY" in parts:
        parts["BYDAY"] = _days(parts)
    if "WKST" in parts and parts["WKST"] not in _DAYS.values():
        raise InvalidRecurrence(f"WKST: {parts['WKST']!r} is not a day")
    if "TZID" in parts:
        _zone(parts["TZID"])
    if "UNTIL" in parts:
        _until(parts["UNTIL"], UTC)


# The combinations refused below are those whose occurrences could stop for good (the
# first Monday of a month on its 31st; every seventh day, on Tuesdays, from a Monday):
# dateutil looks for a next one up to the year 9999, period by period, whatever the
# UNTIL (seconds of CPU at every completion). What is left meets again within a few
# periods.


def _month_days(parts: dict[str, str]) -> str:
    freq = parts["FREQ"]
    if freq in ("DAILY", "WEEKLY"):
        raise InvalidRecurrence(f"BYMONTHDAY: not with FREQ={freq} (use MONTHLY)")
    days = []
    for day in parts["BYMONTHDAY"].split(","):
        number = _bounded(day, "BYMONTHDAY", -31, 31)
        if number == 0:
            raise InvalidRecurrence("BYMONTHDAY: 0 is not a day of the month")
        # The same month each time, which may never have that day (February the 30th).
        if abs(number) > 28 and freq == "MONTHLY" and _interval(parts) % 12 == 0:
            raise InvalidRecurrence(
                f"BYMONTHDAY: {number} with an INTERVAL of whole years: use FREQ=YEARLY"
            )
        days.append(str(number))
    return ",".join(days)


def _days(parts: dict[str, str]) -> str:
    freq = parts["FREQ"]
    if freq == "DAILY" and _interval(parts) % 7 == 0:
        raise InvalidRecurrence("BYDAY: with a DAILY INTERVAL of whole weeks, use FREQ=WEEKLY")
    if freq == "YEARLY" and "BYMONTHDAY" in parts:
        raise InvalidRecurrence("BYDAY: not with BYMONTHDAY when FREQ=YEARLY (use MONTHLY)")
    days = []
    for day in parts["BYDAY"].split(","):
        match = _WEEKDAY.match(day.strip())
        if match is None:
            raise InvalidRecurrence(f"BYDAY: {day!r} is not a day (MO, TU, … or 1MO, -1FR)")
        position, weekday = match.groups()
        if position is None:
            days.append(weekday)
            continue
        if freq not in _POSITIONS:
            raise InvalidRecurrence(f"BYDAY: {day!r} has a position: only MONTHLY or YEARLY")
        if "BYMONTHDAY" in parts:
            raise InvalidRecurrence(f"BYDAY: {day!r} has a position: not with BYMONTHDAY")
        # Every month has a 4th Monday, not every one a 5th; every year a 52nd.
        number = _bounded(position, "BYDAY", -_POSITIONS[freq], _POSITIONS[freq])
        if number == 0:
            raise InvalidRecurrence(f"BYDAY: {day!r}: a position counts from 1 (or -1)")
        days.append(f"{number}{weekday}")
    return ",".join(days)


def _interval(parts: dict[str, str]) -> int:
    return int(parts.get("INTERVAL", "1"))


def _bounded(value: str, name: str, low: int, high: int) -> int:
    if not _WHOLE_NUMBER.fullmatch(value):
        raise InvalidRecurrence(f"{name}: {value!r} is not a whole number")
    number = int(value)
    if not low <= number <= high:
        raise InvalidRecurrence(f"{name} must be from {low} to {high}")
    return number


def _zone(name: str) -> ZoneInfo:
    # Zone names are case-sensitive on disk; the rule was upper-cased.
    # Only the zone database's own names: ZoneInfo would also read "localtime" (the
    # host's zone, whatever it is) or a path.
    spelled = _zone_spellings().get(name.upper())
    if spelled is None or spelled in _NOT_ZONES:
        raise InvalidRecurrence(f"TZID: {name!r} is not an IANA time zone")
    return ZoneInfo(spelled)


_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


@cache
def _zone_spellings() -> dict[str, str]:
    """Each zone as the zone database spells it (``Europe/Paris``), by its name in
    upper case. Read once: it lists the zone files on disk (milliseconds)."""
    return {zone.upper(): zone for zone in available_timezones()}


def _until(value: str, zone: tzinfo) -> datetime:
    """UNTIL as a UTC moment: a date means the end of that day in the rule's zone, a
    local time (no Z) is read in the rule's zone."""
    try:
        parsed = dateparser.isoparse(value)
    except ValueError:
        raise InvalidRecurrence(f"UNTIL: {value!r} is not a date or date-time") from None
    if re.fullmatch(r"\d{8}", value):
        parsed = datetime.combine(parsed.date(), time(23, 59, 59))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        # 9999-12-31 at -01:00 is past the calendar's end in UTC (year 10000).
        raise InvalidRecurrence(f"UNTIL: {value!r} is outside the calendar") from None


def _stepper(rule: str, due_at: datetime) -> tuple[rrule, datetime]:
    """The dateutil rule for ``rule`` from ``due_at`` in the rule's zone, ending at its
    UNTIL, and ``due_at`` in that zone. COUNT is the caller's (see the
    module's docstring)."""
    parts = dict(part.split("=", 1) for part in rule.split(";"))
    zone = _zone(parts.pop("TZID")) if "TZID" in parts else UTC
    parts.pop("COUNT", None)
    start = due_at.astimezone(zone)
    if "UNTIL" in parts:
        parts["UNTIL"] = _utc_text(_until(parts["UNTIL"], zone))
    text = ";".join(f"{name}={value}" for name, value in parts.items())
    try:
        stepped = rrulestr(text, dtstart=start)
    except ValueError as error:
        raise InvalidRecurrence(str(error)) from None
    if not isinstance(stepped, rrule):  # a set: only from parts this module refuses
        raise InvalidRecurrence("one RRULE only")
    return stepped, start


def _utc_text(moment: datetime) -> str:
    """``moment`` as RFC 5545 writes a UTC date-time (the year in four digits, which
    strftime's %Y does not give before the year 1000)."""
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}{utc:%m%dT%H%M%S}Z"


def next_occurrence(rule: str, due_at: datetime) -> Occurrence | None:
    """The occurrence after the one due at ``due_at``, or None when the series ends
    (at its COUNT or UNTIL, or at the end of the calendar a datetime holds)."""
    parts = dict(part.split("=", 1) for part in rule.split(";"))
    count = int(parts.get("COUNT", "0"))
    if count == 1:
        return None
    try:
        stepped, start = _stepper(rule, due_at)
        following = stepped.after(start)
        if following is None:
            return None
        following = following.astimezone(UTC)
    except OverflowError:
        # Past the year 9999, or before the year 1 in the rule's zone.
        return None
    if count:
        parts["COUNT"] = str(count - 1)
    carried = ";".join(f"{name}={value}" for name, value in parts.items())
    return Occurrence(following, carried)
