"""The quiet policy (nights, holidays) and the trip-storm guard, directly."""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from gateway.relays.policy import QuietPolicy, quiet_until
from gateway.relays.storm import StormGuard

SH = ZoneInfo("Asia/Shanghai")
NIGHT = (time(22, 0), time(7, 0))


def at(day: int, hour: int, minute: int = 0, month: int = 10) -> datetime:
    return datetime(2025, month, day, hour, minute, tzinfo=SH)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (at(5, 21, 59), None),
        (at(5, 22, 0), at(6, 7, 0)),
        (at(5, 23, 30), at(6, 7, 0)),
        (at(6, 0, 10), at(6, 7, 0)),
        (at(6, 6, 59), at(6, 7, 0)),
        (at(6, 7, 0), None),
        (at(6, 12, 0), None),
    ],
)
def test_quiet_hours_wrap_past_midnight(now: datetime, expected: datetime | None) -> None:
    assert quiet_until(QuietPolicy(NIGHT), now) == expected


def test_quiet_hours_within_a_day() -> None:
    lunch = QuietPolicy((time(12, 0), time(13, 30)))
    assert quiet_until(lunch, at(5, 11, 59)) is None
    assert quiet_until(lunch, at(5, 12, 45)) == at(5, 13, 30)
    assert quiet_until(lunch, at(5, 13, 30)) is None


def test_holidays_delay_to_the_first_working_morning() -> None:
    holidays = [date(2025, 10, d) for d in (1, 2, 3)]
    only_days = QuietPolicy.of(None, holidays, True)
    assert quiet_until(only_days, at(2, 15)) == at(4, 0)
    assert quiet_until(only_days, at(4, 0, 1)) is None
    both = QuietPolicy.of(NIGHT, holidays, True)
    # the evening before the holidays: night, then three quiet days, then night till 07:00
    assert quiet_until(both, at(30, 23, month=9)) == at(4, 7)
    assert quiet_until(both, at(3, 23)) == at(4, 7)
    # holidays listed but not quiet: only the night counts
    assert quiet_until(QuietPolicy.of(NIGHT, holidays, False), at(2, 15)) is None
    assert not QuietPolicy.of(None, holidays, False).active


def test_storm_needs_the_share_and_the_minimum() -> None:
    guard = StormGuard(share_pct=30, window_s=300, min_accounts=3, accounts=10)
    assert not guard.note("a", 0.0)
    assert not guard.note("b", 1.0)
    assert not guard.note("c", 2.0)  # 3 of 10 is not more than 30 %
    assert guard.note("d", 3.0)  # 4 of 10 is
    guard.resume()
    assert guard.recent() == 0
    # spread out beyond the window: never a storm
    spread = StormGuard(share_pct=30, window_s=300, min_accounts=3, accounts=10)
    assert not any(spread.note(f"x{i}", i * 301.0) for i in range(10))
    # the same account twice counts once
    again = StormGuard(share_pct=10, window_s=300, min_accounts=2, accounts=10)
    assert not again.note("a", 0.0) and not again.note("a", 1.0)
    assert again.note("b", 2.0)
    # a few accounts: the minimum holds a storm back even at 100 %
    few = StormGuard(share_pct=30, window_s=300, min_accounts=3, accounts=2)
    assert not few.note("a", 0.0) and not few.note("b", 0.0)
