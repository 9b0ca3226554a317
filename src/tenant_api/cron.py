"""Cron expressions of job schedules: standard 5-field and Quartz 6/7-field.

Standard (minute hour day-of-month month day-of-week) is croniter's own language.
Quartz (second minute hour day-of-month month day-of-week [year]) differs in ways
croniter does not know, so it is translated first:
  * ``?`` ("no specific value") must stand in exactly one of the two day fields, as
    Quartz requires (croniter reads it as ``*``);
  * day-of-week numbers are 1-7 = SUN-SAT (croniter: 0-6 = SUN-SAT);
  * ``nL`` (the last weekday n of the month) is croniter's ``Ln``; ``n#k`` keeps its
    form with n shifted.
What croniter cannot evaluate (``LW``, ``L-n``) and what is not deterministic (``H``,
``R``) is refused with the reason, never approximated.

``next_run`` evaluates in the schedule's time zone and returns UTC. Daylight saving
time: a wall-clock time skipped by the spring change runs at the first instant after
the gap; a fixed-hour time repeated by the autumn change runs once (its first
occurrence), while schedules with a wildcard hour keep their real-time cadence through
the repeated hour (Vixie cron's rule).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterBadDateError, CroniterError, croniter

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_RANDOM = re.compile(r"^[hr](\(.*\))?(/\d+)?$", re.IGNORECASE)


class CronError(ValueError):
    """The expression is not usable; the message says why (shown to the client)."""


@dataclass(frozen=True)
class Cron:
    source: str  # as written
    expr: str  # croniter syntax
    seconds: bool  # a seconds field leads (Quartz)
    fixed_hour: bool  # the hour field names hours (not * or */n)


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """An IANA time zone by name, or CronError."""
    if name not in _zones():
        raise CronError(f"unknown time zone {name!r} (expected an IANA name such as 'Europe/Berlin')")
    return ZoneInfo(name)


def _weekday(value: str) -> int:
    """One Quartz day-of-week value (1-7 = SUN-SAT, or a name) as croniter's 0-6."""
    if value.isdigit():
        n = int(value)
        if not 1 <= n <= 7:
            raise CronError(f"day-of-week {value} is out of range: Quartz numbers days 1-7 (SUN-SAT)")
        return n - 1
    if value.lower() in _DAY_NAMES:
        return _DAY_NAMES.index(value.lower())
    raise CronError(f"day-of-week {value!r} is not a day (1-7 or SUN-SAT)")


def _quartz_day_of_week(field: str) -> str:
    out = []
    for item in field.split(","):
        if item in ("?", "*") or item.startswith("*/"):
            out.append(item)
        elif m := re.fullmatch(r"(\w+)#(\d+)", item):
            out.append(f"{_weekday(m[1])}#{m[2]}")
        elif m := re.fullmatch(r"(\w*?)L", item, re.IGNORECASE):
            # nL: the last weekday n of the month; a bare L: the last day of the week
            out.append(f"L{_weekday(m[1])}" if m[1] else "6")
        elif m := re.fullmatch(r"(\w+)(?:-(\w+))?(/\d+)?", item):
            out.append(f"{_weekday(m[1])}" + (f"-{_weekday(m[2])}" if m[2] else "") + (m[3] or ""))
        else:
            raise CronError(f"day-of-week {item!r} is not understood")
    return ",".join(out)


@lru_cache(maxsize=1024)
def parse(source: str) -> Cron:
    """Validate and translate an expression; CronError says what is wrong."""
    fields = source.split()
    if not fields:
        raise CronError("empty expression")
    for field in fields:
        if any(_RANDOM.match(item) for item in field.split(",")):
            raise CronError(f"{field!r}: hashed or random values (H, R) are not supported")
    if len(fields) == 1 and fields[0].startswith("@"):
        expr, seconds, fixed_hour = fields[0], False, fields[0].lower() != "@hourly"
    elif len(fields) == 5:
        expr, seconds, fixed_hour = " ".join(fields), False, not fields[1].startswith("*")
    elif len(fields) in (6, 7):
        dom, dow = fields[3], fields[5]
        if (dom == "?") == (dow == "?"):
            raise CronError("a Quartz expression (6 or 7 fields, seconds first) needs '?' in exactly one of "
                            "day-of-month and day-of-week")
        if "?" in "".join(fields[:3] + fields[4:5] + fields[6:]) or "?" in (dom + dow).replace("?", "", 1):
            raise CronError("'?' is allowed only as the whole day-of-month or day-of-week field")
        if re.search(r"LW|L-\d", dom, re.IGNORECASE):
            raise CronError(f"day-of-month {dom!r}: 'LW' and 'L-n' are not supported")
        fields = [*fields[:5], _quartz_day_of_week(dow), *fields[6:]]
        expr, seconds, fixed_hour = " ".join(fields), True, not fields[2].startswith("*")
    else:
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week) or 6-7 Quartz fields "
                        f"(second minute hour day-of-month month day-of-week [year]), got {len(fields)}")
    try:
        croniter(expr, dt.datetime(2000, 1, 1, tzinfo=dt.UTC), second_at_beginning=seconds)
    except CroniterError as exc:
        # croniter's messages read "[<expression>] is not acceptable, <why>"
        why = re.sub(r"^\[[^\]]*\]\s*(is not acceptable[.,]?\s*)?", "", str(exc))
        raise CronError(f"invalid expression: {why}" if why else "invalid expression") from None
    return Cron(source=source, expr=expr, seconds=seconds, fixed_hour=fixed_hour)


def next_run(cron: Cron | str, timezone: str, after: dt.datetime) -> dt.datetime | None:
    """The first run strictly after ``after`` (aware), in UTC; None if it never fires again."""
    if isinstance(cron, str):
        cron = parse(cron)
    it = croniter(cron.expr, after.astimezone(zone(timezone)), second_at_beginning=cron.seconds)
    try:
        for _ in range(4):
            at: dt.datetime = it.get_next(dt.datetime)
            repeated = at.fold == 1 and at.utcoffset() != at.replace(fold=0).utcoffset()
            if not (repeated and cron.fixed_hour):
                return at.astimezone(dt.UTC)
    except CroniterBadDateError:
        return None
    return None


def shortest_interval(cron: Cron | str, timezone: str, after: dt.datetime, runs: int = 64) -> float | None:
    """The shortest time in seconds between two consecutive runs among the next ``runs``
    after ``after``; None if it runs fewer than twice. A cron's pattern repeats, so its
    densest stretch (every second during one hour, say) shows up among its next runs."""
    if isinstance(cron, str):
        cron = parse(cron)
    previous = next_run(cron, timezone, after)
    shortest: float | None = None
    for _ in range(runs - 1):
        if previous is None:
            break
        upcoming = next_run(cron, timezone, previous)
        if upcoming is None:
            break
        gap = (upcoming - previous).total_seconds()
        shortest = gap if shortest is None else min(shortest, gap)
        previous = upcoming
    return shortest
