"""Unit tier: recurrence rules, checked (each part at fault named) and stepped from one
occurrence to the next (by dateutil's rrule, in the rule's zone)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from write_side.errors import InvalidTask
from write_side.recurrence import (
    RULE_MAX_LENGTH,
    InvalidRecurrence,
    Occurrence,
    next_occurrence,
    parse_rule,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def series(rule: str, due_at: datetime, limit: int = 50) -> list[Occurrence]:
    """The occurrences after the one due at ``due_at``, as task after task carries the
    rule on (each completed in turn), until the series ends (or ``limit``)."""
    found: list[Occurrence] = []
    following = next_occurrence(rule, due_at)
    while following is not None and len(found) < limit:
        found.append(following)
        following = next_occurrence(following.rule, following.due_at)
    return found


@pytest.mark.parametrize(
    ("sent", "canonical"),
    [
        ("DAILY", "FREQ=DAILY"),
        ("WEEKLY", "FREQ=WEEKLY"),
        ("WEEKLY:MON,WED", "FREQ=WEEKLY;BYDAY=MO,WE"),
        ("weekly:mon, wed", "FREQ=WEEKLY;BYDAY=MO,WE"),
        ("MONTHLY", "FREQ=MONTHLY"),
        ("MONTHLY:15", "FREQ=MONTHLY;BYMONTHDAY=15"),
        ("YEARLY", "FREQ=YEARLY"),
        ("RRULE:FREQ=DAILY;INTERVAL=2", "FREQ=DAILY;INTERVAL=2"),
        ("rrule:freq=weekly;byday=mo,fr;count=4", "FREQ=WEEKLY;BYDAY=MO,FR;COUNT=4"),
        ("  FREQ=MONTHLY;BYDAY=-1FR  ", "FREQ=MONTHLY;BYDAY=-1FR"),
        ("FREQ=YEARLY;BYDAY=1MO", "FREQ=YEARLY;BYDAY=1MO"),
        ("FREQ=DAILY;UNTIL=20260105T090000Z", "FREQ=DAILY;UNTIL=20260105T090000Z"),
        ("FREQ=WEEKLY;WKST=SU;BYDAY=MO", "FREQ=WEEKLY;WKST=SU;BYDAY=MO"),
        # The zone as the zone database spells it, however it was sent.
        ("tzid=europe/paris;freq=daily", "TZID=Europe/Paris;FREQ=DAILY"),
        ("FREQ=DAILY;TZID=America/New_York", "FREQ=DAILY;TZID=America/New_York"),
    ],
)
def test_a_rule_is_stored_as_its_canonical_text(sent: str, canonical: str) -> None:
    assert parse_rule(sent) == canonical
    assert parse_rule(canonical) == canonical  # the canonical text is a fixed point


@pytest.mark.parametrize(
    ("sent", "named"),
    [
        ("INTERVAL=2", "FREQ is required"),
        ("", "FREQ is required"),
        ("FREQ=HOURLY", "FREQ must be one of"),
        ("HOURLY", "'HOURLY'"),
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL"),
        ("FREQ=DAILY;INTERVAL=1001", "INTERVAL"),
        ("FREQ=DAILY;INTERVAL=two", "INTERVAL"),
        ("FREQ=DAILY;COUNT=0", "COUNT"),
        ("FREQ=DAILY;COUNT=3;UNTIL=20260101", "COUNT and UNTIL"),
        ("FREQ=MONTHLY;BYMONTHDAY=0", "BYMONTHDAY"),
        ("FREQ=MONTHLY;BYMONTHDAY=32", "BYMONTHDAY"),
        ("FREQ=MONTHLY;BYMONTHDAY=-32", "BYMONTHDAY"),
        ("MONTHLY:40", "BYMONTHDAY"),
        ("FREQ=WEEKLY;BYDAY=XX", "BYDAY"),
        ("WEEKLY:MON,XYZ", "BYDAY"),
        ("FREQ=WEEKLY;BYDAY=1MO", "BYDAY"),
        ("FREQ=DAILY;BYDAY=-1FR", "BYDAY"),
        ("FREQ=WEEKLY;WKST=XX", "WKST"),
        ("FREQ=DAILY;BYHOUR=9", "BYHOUR"),
        ("FREQ=DAILY;FREQ=WEEKLY", "FREQ is given twice"),
        ("FREQ=DAILY;INTERVAL", "'INTERVAL'"),
        ("FREQ=DAILY;TZID=Mars/Olympus", "TZID"),
        ("FREQ=DAILY;UNTIL=tomorrow", "UNTIL"),
        ("DAILY:3", "DAILY takes no argument"),
        ("FREQ=DAILY;" + "INTERVAL=1;" * 50, f"at most {RULE_MAX_LENGTH} characters"),
    ],
)
def test_an_invalid_rule_is_refused_naming_the_part(sent: str, named: str) -> None:
    with pytest.raises(InvalidRecurrence) as refused:
        parse_rule(sent)
    assert named.upper() in str(refused.value).upper()
    assert isinstance(refused.value, InvalidTask)
    assert refused.value.field == "recurrence"


def test_monthly_on_the_31st_skips_the_months_without_one() -> None:
    due = [o.due_at for o in series("FREQ=MONTHLY;BYMONTHDAY=31", utc(2026, 1, 31, 9), 3)]
    assert due == [utc(2026, 3, 31, 9), utc(2026, 5, 31, 9), utc(2026, 7, 31, 9)]
    # Without BYMONTHDAY the day is the due date's: the same months are skipped.
    assert next_occurrence("FREQ=MONTHLY", utc(2026, 1, 31, 9)) == Occurrence(
        utc(2026, 3, 31, 9), "FREQ=MONTHLY"
    )


def test_weekly_on_several_days() -> None:
    monday = utc(2026, 3, 2, 9)
    assert monday.weekday() == 0
    due = [o.due_at for o in series("FREQ=WEEKLY;BYDAY=MO,WE", monday, 3)]
    assert due == [utc(2026, 3, 4, 9), utc(2026, 3, 9, 9), utc(2026, 3, 11, 9)]


def test_a_due_date_off_the_rule_steps_to_the_rules_next_day() -> None:
    friday = utc(2026, 3, 6, 9)
    following = next_occurrence("FREQ=WEEKLY;BYDAY=MO,WE", friday)
    assert following is not None
    assert following.due_at == utc(2026, 3, 9, 9)


def test_interval() -> None:
    due = [o.due_at for o in series("FREQ=DAILY;INTERVAL=3", utc(2026, 3, 1, 9), 2)]
    assert due == [utc(2026, 3, 4, 9), utc(2026, 3, 7, 9)]


def test_count_counts_the_task_holding_it_and_the_rest_of_the_series() -> None:
    occurrences = series("FREQ=DAILY;COUNT=3", utc(2026, 3, 1, 9))
    assert occurrences == [
        Occurrence(utc(2026, 3, 2, 9), "FREQ=DAILY;COUNT=2"),
        Occurrence(utc(2026, 3, 3, 9), "FREQ=DAILY;COUNT=1"),
    ]
    assert next_occurrence("FREQ=DAILY;COUNT=1", utc(2026, 3, 3, 9)) is None


def test_until_is_inclusive() -> None:
    rule = "FREQ=DAILY;UNTIL=20260305T090000Z"
    due = [o.due_at for o in series(rule, utc(2026, 3, 3, 9))]
    assert due == [utc(2026, 3, 4, 9), utc(2026, 3, 5, 9)]
    assert all(o.rule == rule for o in series(rule, utc(2026, 3, 3, 9)))
    # A second later, and the last one is past the end.
    assert [o.due_at for o in series(rule, utc(2026, 3, 3, 9, 0, 1))] == [utc(2026, 3, 4, 9, 0, 1)]


def test_until_a_date_means_the_end_of_that_day_in_the_rules_zone() -> None:
    rule = parse_rule("TZID=Europe/Paris;FREQ=DAILY;UNTIL=20260305")
    # 23:30 in Paris on the 5th is 22:30Z: still within the 5th there.
    due = [o.due_at for o in series(rule, utc(2026, 3, 3, 22, 30))]
    assert due == [utc(2026, 3, 4, 22, 30), utc(2026, 3, 5, 22, 30)]


def test_a_daily_rule_keeps_the_wall_clock_of_its_zone_when_summer_time_ends() -> None:
    rule = parse_rule("TZID=Europe/Paris;FREQ=DAILY")
    start = datetime(2026, 10, 24, 9, tzinfo=PARIS)
    assert start.astimezone(UTC) == utc(2026, 10, 24, 7)
    following = next_occurrence(rule, start.astimezone(UTC))
    assert following == Occurrence(utc(2026, 10, 25, 8), rule)
    assert following.due_at.astimezone(PARIS).hour == 9
    assert following.due_at.tzinfo is UTC


def test_a_daily_rule_keeps_the_wall_clock_of_its_zone_when_summer_time_starts() -> None:
    rule = parse_rule("FREQ=DAILY;TZID=America/New_York")
    start = datetime(2026, 3, 7, 9, tzinfo=NEW_YORK)
    assert start.astimezone(UTC) == utc(2026, 3, 7, 14)
    due = [o.due_at for o in series(rule, start.astimezone(UTC), 2)]
    assert due == [utc(2026, 3, 8, 13), utc(2026, 3, 9, 13)]


def test_without_a_zone_a_rule_steps_in_utc() -> None:
    start = datetime(2026, 10, 24, 9, tzinfo=PARIS)
    following = next_occurrence("FREQ=DAILY", start.astimezone(UTC))
    assert following is not None
    assert following.due_at - start == timedelta(days=1)
    assert following.due_at.astimezone(PARIS).hour == 8


def test_a_positioned_day_with_a_day_of_the_month_is_refused() -> None:
    # The first Monday of a month is on its 1st to 7th, never its 31st: a rule that
    # dateutil would search for up to the year 9999 at every completion.
    with pytest.raises(InvalidRecurrence, match="BYDAY: '1MO' has a position: not with BYMONTHDAY"):
        parse_rule("FREQ=MONTHLY;BYMONTHDAY=31;BYDAY=1MO")


@pytest.mark.parametrize(
    ("rule", "named"),
    [
        # Rules whose occurrences could stop for good: dateutil would search up to
        # the year 9999 at every completion.
        ("FREQ=MONTHLY;INTERVAL=12;BYMONTHDAY=30", "BYMONTHDAY: 30 with an INTERVAL of whole"),
        ("FREQ=DAILY;INTERVAL=7;BYDAY=TU", "BYDAY: with a DAILY INTERVAL of whole weeks"),
        ("FREQ=MONTHLY;BYDAY=5MO", "BYDAY must be from -4 to 4"),
        ("FREQ=MONTHLY;BYDAY=10MO", "BYDAY must be from -4 to 4"),
        ("FREQ=YEARLY;BYDAY=99MO", "BYDAY must be from -52 to 52"),
        ("FREQ=YEARLY;BYDAY=-54MO", "BYDAY must be from -52 to 52"),
        ("FREQ=YEARLY;BYDAY=MO;BYMONTHDAY=31", "BYDAY: not with BYMONTHDAY when FREQ=YEARLY"),
        ("FREQ=DAILY;BYMONTHDAY=31", "BYMONTHDAY: not with FREQ=DAILY"),
        ("FREQ=WEEKLY;BYMONTHDAY=31;BYDAY=MO", "BYMONTHDAY: not with FREQ=WEEKLY"),
        ("FREQ=MONTHLY;INTERVAL=121", "INTERVAL must be from 1 to 120"),
        ("FREQ=YEARLY;INTERVAL=101", "INTERVAL must be from 1 to 100"),
        ("FREQ=MONTHLY;BYDAY=0MO", "a position counts from 1"),
        # Only ASCII digits (int() would take these too).
        ("FREQ=DAILY;INTERVAL=\u0665", "INTERVAL: '\u0665' is not a whole number"),
        ("FREQ=DAILY;INTERVAL=1_0", "INTERVAL: '1_0' is not a whole number"),
        ("FREQ=DAILY;TZID=localtime", "TZID: 'LOCALTIME' is not an IANA time zone"),
        ("FREQ=DAILY;TZID=Factory", "TZID: 'FACTORY' is not an IANA time zone"),
    ],
)
def test_rules_that_could_stop_meeting_are_refused(rule: str, named: str) -> None:
    with pytest.raises(InvalidRecurrence, match=re.escape(named)):
        parse_rule(rule)


def test_numbers_are_written_plainly() -> None:
    assert parse_rule("FREQ=MONTHLY;INTERVAL=+05;BYMONTHDAY=+1,-01;COUNT=007") == (
        "FREQ=MONTHLY;INTERVAL=5;BYMONTHDAY=1,-1;COUNT=7"
    )
    assert parse_rule("FREQ=MONTHLY;BYDAY=+1MO,-01FR") == "FREQ=MONTHLY;BYDAY=1MO,-1FR"


_FREQUENCIES = ("DAILY", "WEEKLY", "MONTHLY", "YEARLY")
_INTERVALS = (1, 2, 3, 4, 6, 7, 12, 14, 24, 28, 48, 84, 100, 120)
_FILTERS = (
    "",
    ";BYDAY=TU",
    ";BYDAY=MO,FR",
    ";BYDAY=1MO",
    ";BYDAY=-1SU",
    ";BYDAY=4TH",
    ";BYDAY=52MO",
    ";BYMONTHDAY=29",
    ";BYMONTHDAY=31",
    ";BYMONTHDAY=-31",
    ";BYMONTHDAY=13;BYDAY=FR",
    ";BYMONTHDAY=31;BYDAY=MO",
)
# Days from which some strides miss: a non-leap February's end, a leap day, a 31st.
_STARTS = (utc(2027, 2, 28, 9), utc(2028, 2, 29, 9), utc(2026, 1, 31, 9), utc(2026, 6, 1, 9))


def test_every_rule_accepted_meets_again_at_once() -> None:
    """Across frequencies, strides near the calendar's cycles, and the filters: each
    rule that is accepted has a next occurrence, found in milliseconds."""
    accepted = 0
    for freq in _FREQUENCIES:
        for interval in _INTERVALS:
            for filters in _FILTERS:
                try:
                    rule = parse_rule(f"FREQ={freq};INTERVAL={interval}{filters}")
                except InvalidRecurrence:
                    continue
                accepted += 1
                for start in _STARTS:
                    began = time.monotonic()
                    following = next_occurrence(rule, start)
                    assert following is not None, (rule, start)
                    assert time.monotonic() - began < 0.5, (rule, start)
    assert accepted > 150


def test_a_rule_whose_parts_rarely_meet_finds_the_next_meeting() -> None:
    # A Monday the 31st: August 2026.
    following = next_occurrence("FREQ=MONTHLY;BYMONTHDAY=31;BYDAY=MO", utc(2026, 1, 5, 9))
    assert following is not None
    assert following.due_at == utc(2026, 8, 31, 9)


@pytest.mark.parametrize(
    ("rule", "due_at", "following"),
    [
        ("FREQ=DAILY", utc(9999, 12, 30, 12), utc(9999, 12, 31, 12)),
        ("TZID=America/Los_Angeles;FREQ=DAILY", utc(9999, 12, 30), utc(9999, 12, 31)),
        ("FREQ=DAILY", utc(9999, 12, 31, 12), None),
        ("FREQ=YEARLY", utc(9999, 3, 1), None),
        ("TZID=Pacific/Kiritimati;FREQ=DAILY", utc(9999, 12, 31), None),
        # Before the year 1 in the rule's zone.
        ("TZID=America/Los_Angeles;FREQ=DAILY", utc(1, 1, 1), None),
        # Years before 1000 (whose UNTIL strftime would write in fewer digits).
        ("FREQ=DAILY", utc(1, 1, 1), utc(1, 1, 2)),
        ("FREQ=YEARLY", utc(500, 1, 1), utc(501, 1, 1)),
    ],
)
def test_a_series_ends_where_the_calendar_does(
    rule: str, due_at: datetime, following: datetime | None
) -> None:
    found = next_occurrence(parse_rule(rule), due_at)
    assert (None if found is None else found.due_at) == following
