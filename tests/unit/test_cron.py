"""Cron expressions (tenant_api.cron): when a schedule fires next, and why a bad one is refused."""

import datetime as dt

import pytest

from tenant_api.cron import CronError, next_run, parse


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("expr,tz,after,expected", [
    # standard 5-field, New York, either side of the spring change (2026-03-08)
    ("0 9 * * *", "America/New_York", "2026-03-07T12:00Z", "2026-03-07T14:00Z"),  # EST, UTC-5
    ("0 9 * * *", "America/New_York", "2026-03-07T15:00Z", "2026-03-08T13:00Z"),  # EDT, UTC-4
    ("30 9 * * 1-5", "Asia/Kolkata", "2026-03-06T04:00Z", "2026-03-09T04:00Z"),  # Fri after 9:30 IST -> Mon
    # Quartz 6-field: seconds first, '?' in one day field, days 1-7 = SUN-SAT
    ("0 30 9 ? * MON-FRI", "Europe/Berlin", "2026-03-07T12:00Z", "2026-03-09T08:30Z"),
    ("0 30 9 ? * 2-6", "Europe/Berlin", "2026-03-07T12:00Z", "2026-03-09T08:30Z"),  # 2-6 = MON-FRI
    ("0 0 12 ? * 1", "UTC", "2026-03-07T12:00Z", "2026-03-08T12:00Z"),  # 1 = Sunday
    ("15 0 10 15 * ?", "UTC", "2026-03-07T12:00Z", "2026-03-15T10:00:15Z"),
    ("0 0 12 ? * 6L", "UTC", "2026-03-07T12:00Z", "2026-03-27T12:00Z"),  # last Friday
    ("0 0 12 ? * 6#2", "UTC", "2026-03-07T12:00Z", "2026-03-13T12:00Z"),  # second Friday
    ("0 15 10 L * ?", "UTC", "2026-03-07T12:00Z", "2026-03-31T10:15Z"),
    ("*/10 * * * * ?", "UTC", "2026-03-07T12:00:01Z", "2026-03-07T12:00:10Z"),
    # Quartz 7-field with a year
    ("0 0 0 1 1 ? 2030", "Pacific/Auckland", "2026-03-07T12:00Z", "2029-12-31T11:00Z"),
    # DST: a skipped local time runs right after the gap; a repeated one runs once
    ("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00Z", "2026-03-29T01:00Z"),
    ("30 2 * * *", "Europe/Berlin", "2026-10-25T00:31Z", "2026-10-26T01:30Z"),
    # ... while a wildcard hour keeps its real-time cadence through the repeated hour
    ("*/20 * * * *", "Europe/Berlin", "2026-10-25T00:50Z", "2026-10-25T01:00Z"),
])
def test_next_run(expr, tz, after, expected):
    assert next_run(expr, tz, at(after)) == at(expected)


@pytest.mark.parametrize("expr,reason", [
    ("* * * *", "expected 5 fields"),
    ("* * * * * * * *", "got 8"),
    ("61 * * * *", "out of range"),
    ("a b c d e", "invalid expression"),
    ("0 0 12 * * *", "needs '?' in exactly one of day-of-month and day-of-week"),
    ("0 0 12 ? * ?", "needs '?' in exactly one"),
    ("0 0 12 ? * 0", "Quartz numbers days 1-7"),
    ("0 0 12 ? * 8", "Quartz numbers days 1-7"),
    ("? 0 12 1 * ?", "'?' is allowed only"),
    ("0 0 12 LW * ?", "not supported"),
    ("H * * * *", "hashed or random"),
    ("0 0 12 ? * 2#6", "day_of_week"),
])
def test_bad_cron_says_why(expr, reason):
    with pytest.raises(CronError, match=None) as info:
        parse(expr)
    assert reason in str(info.value)


def test_expression_that_never_fires_again():
    assert next_run("0 0 0 1 1 ? 2020", "UTC", at("2026-01-01T00:00Z")) is None
    assert next_run("0 0 30 2 *", "UTC", at("2026-01-01T00:00Z")) is None
