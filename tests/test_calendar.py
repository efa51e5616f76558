"""Cutoffs over WAEMU banking calendars (the ``holidays`` package), with dates a config adds or opens."""

from __future__ import annotations

import datetime as dt

import pytest

from connectors._calendar import BankCalendar, CalendarError, CutoffConfig

UTC = dt.UTC


def dakar(**kw: object) -> BankCalendar:
    fields: dict[str, object] = {"country": "SN", "timezone": "Africa/Dakar", "times": ["15:30", "10:00"], **kw}
    return BankCalendar(CutoffConfig(**fields))  # type: ignore[arg-type]


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_cutoffs_of_a_business_day_then_the_next_business_day() -> None:
    cal = dakar()
    assert cal.next_cutoff(at(2026, 12, 1, 8, 0)) == dt.datetime(2026, 12, 1, 10, 0, tzinfo=cal.zone)
    assert cal.next_cutoff(at(2026, 12, 1, 10, 0)) == dt.datetime(2026, 12, 1, 15, 30, tzinfo=cal.zone)
    assert cal.execution_date(at(2026, 12, 1, 15, 29)) == dt.date(2026, 12, 1)
    # Missed Thursday's last cutoff: Friday 25 December is Christmas, then a weekend: Monday the 28th.
    assert cal.holiday_name(dt.date(2026, 12, 25)) == "Christmas Day"
    assert cal.execution_date(at(2026, 12, 24, 16, 0)) == dt.date(2026, 12, 28)
    assert cal.next_cutoff(at(2026, 12, 26, 9, 0)) == dt.datetime(2026, 12, 28, 10, 0, tzinfo=cal.zone)


def test_the_banks_own_zone_decides_the_day() -> None:
    # 23:30 UTC on Monday is 00:30 on Tuesday in Dhaka: a Tuesday cutoff is still ahead there.
    cal = BankCalendar(CutoffConfig(country="BD", timezone="Asia/Dhaka", times=["10:00"]))
    assert cal.execution_date(at(2026, 12, 7, 23, 30)) == dt.date(2026, 12, 8)


def test_config_closes_and_opens_days() -> None:
    closed = dakar(holidays=[dt.date(2026, 12, 2)])
    assert not closed.is_business_day(dt.date(2026, 12, 2))
    assert closed.execution_date(at(2026, 12, 1, 16, 0)) == dt.date(2026, 12, 3)
    opened = dakar(open_days=[dt.date(2026, 12, 25)])
    assert opened.execution_date(at(2026, 12, 24, 16, 0)) == dt.date(2026, 12, 25)


@pytest.mark.parametrize("country", ["SN", "CI", "BJ", "BF", "ML", "NE", "TG", "GW"])
def test_every_waemu_country_has_a_calendar(country: str) -> None:
    cal = BankCalendar(CutoffConfig(country=country, timezone="Africa/Abidjan", times=["12:00"]))
    assert cal.holiday_name(dt.date(2027, 1, 1)) is not None, "New Year's Day"


@pytest.mark.parametrize(("fields", "says"), [
    ({"country": "XX"}, "no holiday calendar for country 'XX'"),
    ({"timezone": "Africa/Nowhere"}, "unknown time zone"),
    ({"times": []}, "no cutoff time"),
    ({"times": ["25:00"]}, "cutoff times"),
])
def test_bad_calendars_are_clear_errors(fields: dict[str, object], says: str) -> None:
    with pytest.raises(CalendarError, match=says):
        dakar(**fields)
