"""Prepaid states from thresholds as data: alarms, due to trip, may close after a
top-up above the close-allow level; postpaid never trips, unbilled is always normal."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.prepaid import PrepaidState, StateChange, StateTracker, Thresholds, evaluate

S = PrepaidState
# alarm 1 at 50 yuan, alarm 2 at 20 yuan, 10 yuan overdraft, close allowed above 30 yuan
LEVELS = Thresholds(
    alarm1=500_000, alarm2=200_000, overdraft_limit=100_000, close_allow=300_000,
    emergency_credit=50_000,
)  # fmt: skip


@pytest.mark.parametrize(
    ("balance", "state"),
    [
        (500_001, S.NORMAL),
        (500_000, S.ALARM1),  # R <= alarm 1
        (200_001, S.ALARM1),
        (200_000, S.ALARM2),  # R <= alarm 2
        (0, S.ALARM2),
        (-99_999, S.ALARM2),  # -99_999 + 100_000 = 1 > 0: still inside the overdraft
        (-100_000, S.DUE_TO_TRIP),  # -100_000 + 100_000 = 0 <= 0: trip
        (-5_000_000, S.DUE_TO_TRIP),
    ],
)
def test_prepaid_levels(balance: int, state: PrepaidState) -> None:
    assert evaluate(balance, LEVELS, account_type="prepaid", trip_on_arrears=True) == state


def test_postpaid_and_no_trip_flag_never_trip_unbilled_always_normal() -> None:
    for balance in (-(10**9), -100_000, 0, 100_000):
        for kind, flag in (("postpaid", True), ("postpaid", False), ("prepaid", False)):
            got = evaluate(balance, LEVELS, account_type=kind, trip_on_arrears=flag, tripped=True)
            assert got not in (S.DUE_TO_TRIP, S.MAY_CLOSE)
        assert evaluate(balance, LEVELS, account_type="unbilled", trip_on_arrears=True) == S.NORMAL
    assert evaluate(-(10**9), LEVELS, account_type="postpaid", trip_on_arrears=False) == S.ALARM2


def test_tracker_trip_top_up_below_close_allow_then_above_then_closed() -> None:
    tracker = StateTracker(LEVELS)

    def update(balance: int, ts: int) -> StateChange | None:
        return tracker.update("A", balance, ts, account_type="prepaid", trip_on_arrears=True)

    assert update(600_000, 1) is None  # normal, as before
    assert update(450_000, 2) == StateChange("A", 2, S.NORMAL, S.ALARM1, 450_000)
    assert update(150_000, 3) == StateChange("A", 3, S.ALARM1, S.ALARM2, 150_000)
    assert update(-100_000, 4) == StateChange("A", 4, S.ALARM2, S.DUE_TO_TRIP, -100_000)
    # a top-up to 25 yuan: above the trip level but not above close-allow (30): stays tripped
    assert update(250_000, 5) is None and tracker.state("A") == S.DUE_TO_TRIP
    # 30 yuan exactly is not above close-allow
    assert update(300_000, 6) is None
    assert update(300_001, 7) == StateChange("A", 7, S.DUE_TO_TRIP, S.MAY_CLOSE, 300_001)
    # still open: falling back to the close-allow level holds it tripped again
    assert update(299_000, 8) == StateChange("A", 8, S.MAY_CLOSE, S.DUE_TO_TRIP, 299_000)
    assert update(900_000, 9) == StateChange("A", 9, S.DUE_TO_TRIP, S.MAY_CLOSE, 900_000)
    tracker.relay_closed("A")  # Step 7 closed it
    assert update(900_000, 10) == StateChange("A", 10, S.MAY_CLOSE, S.NORMAL, 900_000)


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="alarm 2"):
        Thresholds(alarm1=1, alarm2=2)
    with pytest.raises(ValueError, match="overdraft"):
        Thresholds(alarm1=2, alarm2=1, overdraft_limit=-1)
    with pytest.raises(TypeError, match="integer"):
        Thresholds(alarm1=2.5, alarm2=1)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(balances=st.lists(st.integers(-(10**7), 10**7), max_size=40))
def test_tracker_reports_each_change_once_and_agrees_with_evaluate(balances: list[int]) -> None:
    tracker = StateTracker(LEVELS)
    state = S.NORMAL
    for ts, balance in enumerate(balances):
        was_tripped = state in (S.DUE_TO_TRIP, S.MAY_CLOSE)
        change = tracker.update("A", balance, ts, account_type="prepaid", trip_on_arrears=True)
        expected = evaluate(
            balance, LEVELS, account_type="prepaid", trip_on_arrears=True, tripped=was_tripped
        )
        assert tracker.state("A") == expected
        assert (change is None) == (expected == state)
        if change is not None:
            assert (change.old, change.new, change.balance) == (state, expected, balance)
        state = expected
