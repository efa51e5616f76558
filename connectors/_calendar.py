"""A bank's business days and cutoffs: when a payment file must be in, and the execution date it can ask for.

Business days are weekdays that are not public holidays of the bank's country (the ``holidays`` package's
calendars: SN, CI, BJ, BF, ML, NE, TG and GW for the WAEMU, among many), less the dates a config adds
(``holidays``: bank closures, the actual date of an estimated religious holiday) and plus the ones it opens
(``open_days``: an estimated holiday that fell on another day). Cutoffs are times of day in the bank's time
zone. A slice that misses the day's last cutoff gets the next business day as its requested execution date.
"""

from __future__ import annotations

import datetime as dt
import functools
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import msgspec

MAX_LOOKAHEAD_DAYS = 60  # a calendar with no business day in two months is a misconfiguration


class CalendarError(ValueError):
    """A calendar that cannot be used: unknown country or time zone, no cutoff, no business day ahead."""


class CutoffConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[connectors.cutoffs]``."""

    country: str  # ISO 3166 alpha-2: whose public holidays close the bank
    timezone: str  # IANA, e.g. "Africa/Dakar"
    times: list[str]  # "HH:MM" in that zone, e.g. ["10:00", "15:30"]
    holidays: list[dt.date] = msgspec.field(default_factory=list)
    open_days: list[dt.date] = msgspec.field(default_factory=list)


class BankCalendar:
    def __init__(self, config: CutoffConfig) -> None:
        try:
            self.zone = ZoneInfo(config.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise CalendarError(f"unknown time zone {config.timezone!r}") from None
        try:
            self._public = holidays.country_holidays(config.country)
        except NotImplementedError:
            raise CalendarError(f"no holiday calendar for country {config.country!r}") from None
        try:
            self.times = sorted(dt.time.fromisoformat(t) for t in config.times)
        except ValueError as exc:
            raise CalendarError(f"cutoff times: {exc}") from None
        if not self.times:
            raise CalendarError("no cutoff time")
        self._closed = frozenset(config.holidays)
        self._open = frozenset(config.open_days)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - a calendar lives as long as its connector
    def is_business_day(self, day: dt.date) -> bool:
        if day in self._open:
            return True
        return day.weekday() < 5 and day not in self._closed and day not in self._public

    def holiday_name(self, day: dt.date) -> str | None:
        if day in self._closed:
            return "bank holiday (config)"
        name = self._public.get(day)
        return str(name) if name else None

    def next_business_day(self, day: dt.date) -> dt.date:
        """The first business day after ``day``."""
        for offset in range(1, MAX_LOOKAHEAD_DAYS + 1):
            candidate = day + dt.timedelta(days=offset)
            if self.is_business_day(candidate):
                return candidate
        raise CalendarError(f"no business day within {MAX_LOOKAHEAD_DAYS} days after {day}")

    def next_cutoff(self, now: dt.datetime) -> dt.datetime:
        """The first cutoff after ``now`` (an aware datetime) on a business day, in the bank's zone."""
        local = now.astimezone(self.zone)
        day = local.date()
        if self.is_business_day(day):
            for t in self.times:
                cutoff = dt.datetime.combine(day, t, self.zone)
                if cutoff > local:
                    return cutoff
        return dt.datetime.combine(self.next_business_day(day), self.times[0], self.zone)

    def execution_date(self, now: dt.datetime) -> dt.date:
        """The execution date a file sent at ``now`` can ask for: today while a cutoff of today is still ahead,
        else the next business day."""
        return self.next_cutoff(now).date()
