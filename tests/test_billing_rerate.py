"""A late tariff re-rated from the journal: one adjustment (退补) per account.

Amounts in 0.0001 yuan; amount = round_half_up(cumulative Wh x price / 1000) per
(meter, tariff version, segment).  Local time Asia/Shanghai.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from types import ModuleType
from zoneinfo import ZoneInfo

from gateway.billing import Adjustment, Interval, MeterState, Running, TariffBook, rate, rerate
from gateway.config.model import FlatTariff, TieredTariff

SH = ZoneInfo("Asia/Shanghai")
JAN1 = datetime(2026, 1, 1, tzinfo=SH)
FLAT_V1 = FlatTariff("flat", 1, JAN1, 6128)
# published after the fact: 0.6500 yuan/kWh from 2026-03-01 05:00
LATE = FlatTariff("flat", 2, datetime(2026, 3, 1, 5, tzinfo=SH), 6500)
TIERED = TieredTariff("res", 1, JAN1, (2_760_000, 4_800_000), (5283, 5783, 8283))
OLD = TariffBook([FLAT_V1, TIERED])
NEW = OLD.with_tariff(LATE)

START = {
    "m1": MeterState("m1", "A", "flat"),  # account A: two meters
    "m2": MeterState("m2", "A", "flat"),
    "m3": MeterState("m3", "B", "res", year_wh=10_000),  # account B: tariff unchanged
}


def journal() -> list[tuple[str, Interval]]:
    """Ten hours on 2026-03-01 from 00:00: m1 1000 Wh/h, m2 333 Wh/h, m3 500 Wh/h."""
    out = []
    for h in range(10):
        t0 = datetime(2026, 3, 1, h, tzinfo=SH)
        t1 = t0 + timedelta(hours=1)
        out += [("m1", Interval(t0, t1, 1000)), ("m2", Interval(t0, t1, 333))]
        out.append(("m3", Interval(t0, t1, 500)))
    return out


def post(book: TariffBook, engine: ModuleType) -> dict[str, int]:
    """What the ledger posted per account, rating the journal as it arrived."""
    states = dict(START)
    posted: dict[str, int] = {}
    for meter, iv in journal():
        r = rate(states[meter], iv, book, engine=engine)
        states[meter] = r.state
        posted[r.state.account_id] = posted.get(r.state.account_id, 0) + r.amount
    return posted


def test_late_tariff_posts_one_adjustment_per_account(engine: ModuleType) -> None:
    posted = post(OLD, engine)
    # posted under v1 alone:
    # A: m1 10_000 Wh x 6128 / 1000 = 61_280; m2 3_330 Wh x 6128 / 1000 = 20_406.24 -> 20_406
    # B: m3 5_000 Wh x 5283 / 1000 = 26_415 (tier 1 throughout)
    assert posted == {"A": 81_686, "B": 26_415}
    result = rerate(journal(), START, NEW, posted, reason="price reform 2026-03", engine=engine)
    # re-rated, v1 until 05:00 and the late v2 after it:
    # m1: 5_000 Wh x 6128 / 1000 = 30_640 + 5_000 Wh x 6500 / 1000 = 32_500 -> 63_140
    # m2: 1_665 Wh x 6128 / 1000 = 10_203.12 -> 10_203
    #     1_665 Wh x 6500 / 1000 = 10_822.5  -> 10_823            -> 21_026
    # A: 84_166 - 81_686 = +2_480 (the tenant owes 0.2480 yuan more); B: unchanged, none
    assert result.adjustments == (Adjustment("A", 2_480, 84_166, 81_686, "price reform 2026-03"),)
    # rating goes on from the re-rated accumulators
    assert result.states["m1"].totals == {
        ("flat", 1, "flat"): Running(5_000, 30_640),
        ("flat", 2, "flat"): Running(5_000, 32_500),
    }
    assert result.states["m3"].year_wh == 15_000
    assert sum(ln.amount for ln in result.lines) == 84_166 + 26_415


def test_rerating_with_the_same_tariffs_changes_nothing(engine: ModuleType) -> None:
    posted = post(NEW, engine)
    assert rerate(journal(), START, NEW, posted, reason="x", engine=engine).adjustments == ()
    # a price cut posts a negative adjustment: everything at v1 back is 81_686 less than
    # what was posted under the new prices (84_166): -2_480
    back = rerate(journal(), START, OLD, posted, reason="reform withdrawn", engine=engine)
    assert back.adjustments == (Adjustment("A", -2_480, 81_686, 84_166, "reform withdrawn"),)


def test_meters_of_one_account_share_its_tier_total(engine: ModuleType) -> None:
    # Account C, two meters on the tiered tariff, 2_759_000 Wh used this year.
    # m4: 600 Wh -> tier 1 (year now 2_759_600): 600 x 5283 / 1000 = 3169.8 -> 3170
    # m5: 600 Wh -> 400 Wh tier 1 + 200 Wh tier 2 (threshold 2_760_000)
    #     400 x 5283 / 1000 = 2113.2 -> 2113;  200 x 5783 / 1000 = 1156.6 -> 1157
    start = {
        "m4": MeterState("m4", "C", "res", year_wh=2_759_000),
        "m5": MeterState("m5", "C", "res", year_wh=2_759_000),
    }
    t0 = datetime(2026, 8, 1, 10, tzinfo=SH)
    rows = [("m4", Interval(t0, t0 + timedelta(hours=1), 600))]
    rows.append(("m5", Interval(t0, t0 + timedelta(hours=1), 600)))
    result = rerate(rows, start, OLD, {"C": 0}, reason="first posting", engine=engine)
    got = [(ln.meter_id, ln.key, ln.energy_wh, ln.amount) for ln in result.lines]
    assert got == [
        ("m4", "tier:1", 600, 3170),
        ("m5", "tier:1", 400, 2113),
        ("m5", "tier:2", 200, 1157),
    ]
    assert result.adjustments == (Adjustment("C", 6_440, 6_440, 0, "first posting"),)


def test_a_yearly_reset_seen_by_one_meter_holds_for_the_account(engine: ModuleType) -> None:
    # Account C resets its tier total at 2027-01-01 00:00.  m4's interval crosses it:
    # 300 Wh before (tier 1: 300 x 5283 / 1000 = 1584.9 -> 1585), 300 Wh after (the
    # account's total restarts: 300 Wh).  m5's later 600 Wh add to that total (900 Wh);
    # they must not reset it a second time.
    reset = datetime(2027, 1, 1, tzinfo=SH)
    start = {m: MeterState(m, "C", "res", year_wh=2_759_000, year_end=reset) for m in ("m4", "m5")}
    rows = [
        ("m4", Interval(reset - timedelta(hours=1), reset + timedelta(hours=1), 600)),
        ("m5", Interval(reset + timedelta(hours=1), reset + timedelta(hours=2), 600)),
    ]
    result = rerate(rows, start, OLD, {}, reason="x", engine=engine)
    assert result.states["m5"].year_wh == 900
    assert result.states["m5"].year_end is None
    # m4: cum 600 Wh tier 1 x 5283 / 1000 = 3169.8 -> 3170 (1585 + 1585); m5: 3170
    assert result.adjustments == (Adjustment("C", 6_340, 6_340, 0, "x"),)
