"""NCRONTAB, the cron dialect of Functions timer triggers.

Six fields with SECONDS FIRST: `{second} {minute} {hour} {day} {month} {day-of-week}` (the
five-field form has no seconds and fires at second 0). Each field takes `*`, numbers, names
(`Jan`, `Mon`), `a-b`, `a,b,c`, `*/n`, `a-b/n` and `a/n`; day-of-week runs 0-6 with Sunday=0. As in
NCrontab, a time must match every field: day-of-month AND day-of-week, not cron's OR.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

# (name, low, high, names)
_FIELDS = [
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day", 1, 31, None),
    ("month", 1, 12, ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]),
    ("day-of-week", 0, 6, ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]),
]
_SEARCH_YEARS = 10  # a schedule with no time in 10 years (Feb 30, say) never fires
_ITEM = re.compile(r"^(?:(\*)|(\w+)(?:-(\w+))?)(?:/(\d+))?$")


class Ncrontab:
    def __init__(self, expression: str) -> None:
        self.expression = expression
        fields = str(expression).split()
        if len(fields) == 5:
            fields = ["0", *fields]
        elif len(fields) != 6:
            raise ValueError(
                f"invalid NCRONTAB expression {expression!r}: expected 6 fields "
                "'{second} {minute} {hour} {day} {month} {day-of-week}' (or 5 without seconds), "
                f"got {len(fields)}")
        self.seconds, self.minutes, self.hours, self.days, self.months, self.days_of_week = (
            self._parse_field(text, *spec) for text, spec in zip(fields, _FIELDS, strict=True))

    def __repr__(self) -> str:
        return f"Ncrontab({self.expression!r})"

    def _parse_field(self, text: str, name: str, low: int, high: int, names: list[str] | None) -> frozenset[int]:
        def fail(why: str) -> ValueError:
            return ValueError(f"invalid NCRONTAB expression {self.expression!r}: {name} field {text!r}: {why}")

        def number(token: str) -> int:
            if names and token.lower()[:3] in names and not token.isdigit():
                return names.index(token.lower()[:3]) + low
            if not token.isdigit():
                raise fail(f"{token!r} is not a number")
            value = int(token)
            if not low <= value <= high:
                raise fail(f"{value} is out of range {low}-{high}")
            return value

        values: set[int] = set()
        for item in text.split(","):
            m = _ITEM.match(item)
            if not m:
                raise fail(f"cannot parse {item!r}")
            star, start, end, step = m.groups()
            first = low if star else number(start)
            # `a/n` runs from a to the field's end, like `a-max/n`.
            last = high if star or (end is None and step) else number(end) if end else first
            if first > last:
                raise fail(f"range {first}-{last} runs backwards")
            if step is not None and int(step) == 0:
                raise fail("step must be at least 1")
            values.update(range(first, last + 1, int(step or 1)))
        return frozenset(values)

    def matches(self, t: datetime) -> bool:
        return (t.second in self.seconds and t.minute in self.minutes and t.hour in self.hours
                and t.day in self.days and t.month in self.months
                and (t.weekday() + 1) % 7 in self.days_of_week)

    def next_after(self, after: datetime) -> datetime:
        """The first time strictly after `after` (whole seconds; tzinfo kept) that matches."""
        t = after.replace(microsecond=0) + timedelta(seconds=1)
        limit = after.year + _SEARCH_YEARS
        # Jump field by field (month, day, hour, minute) before stepping seconds.
        while t.year <= limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0, second=0) + timedelta(days=32)).replace(day=1)
            elif t.day not in self.days or (t.weekday() + 1) % 7 not in self.days_of_week:
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
            elif t.second not in self.seconds:
                t += timedelta(seconds=1)
            else:
                return t
        raise ValueError(f"NCRONTAB expression {self.expression!r} never fires")
