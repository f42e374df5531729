"""The rating kernel (compiled and twin, through BatchRater) against gateway.billing.rate.

The oracle below applies the Charger's per-reading rules (gateway.charging.post_reading:
baseline, discontinuity, rollover, fall, untrusted time with time of use, no version in
force, unbilled) with gateway.billing.rate and gateway.prepaid.evaluate, one reading at
a time; the BatchRater must give the same lines, balances, states and state to the unit.
Arithmetic of the hand-written cases is in their comments (prices 0.0001 yuan per kWh,
amount = round_half_up(Wh x price / 1000)); Asia/Shanghai is UTC+8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType, ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gateway.billing import (
    BillingYear,
    ChargeLine,
    DayCalendar,
    Running,
    TariffBook,
    TouSeason,
)
from gateway.charging import AccountYear, Billing, RatingRow, rate_reading
from gateway.charging.fast import BatchRater, BatchResult
from gateway.config.model import AccountType, FlatTariff, Tariff, TieredTariff, TouSlot, TouTariff
from gateway.fastpath import _engine_py, layout
from gateway.fastpath.tables import to_us
from gateway.poller import REGISTER_RANGE_WH
from gateway.prepaid import PrepaidState, StateChange, Thresholds, evaluate
from gateway.protocols.quantities import (
    FLAG_DISCONTINUITY,
    FLAG_ROLLOVER,
    FLAG_TIME_UNTRUSTED,
    Quantity,
    Reading,
)

SH = ZoneInfo("Asia/Shanghai")
BASE = datetime(2026, 3, 6, 20, 0, tzinfo=SH)  # a Friday evening: 22:00, midnight, a weekend
REGISTERS = (Quantity.ENERGY_T1, Quantity.ENERGY_T2, Quantity.ENERGY_T3, Quantity.ENERGY_T4)
MAX_GAP = timedelta(hours=2)
LEVELS = Thresholds(alarm1=50_000, alarm2=20_000, overdraft_limit=5_000, close_allow=10_000)

TOU = TouTariff(
    "tou",
    1,
    datetime(2026, 1, 1, tzinfo=SH),
    (
        TouSlot(time(0), 4),  # 00:00 valley
        TouSlot(time(8), 2),  # 08:00 peak
        TouSlot(time(11), 1),  # 11:00 sharp
        TouSlot(time(13), 3),  # 13:00 flat
        TouSlot(time(19), 2),  # 19:00 peak
        TouSlot(time(22), 4),  # 22:00 valley until 08:00 next day
    ),
    {1: 12000, 2: 9000, 3: 6000, 4: 3000},
)
WEEKEND = TouSeason((1, 1), MappingProxyType({"weekend": (TouSlot(time(0), 3),)}))
FLAT = FlatTariff("flat", 1, datetime(2026, 1, 1, tzinfo=SH), 6128)
FLAT_V2 = FlatTariff("flat", 2, datetime(2026, 3, 7, 12, tzinfo=SH), 6500)
TIERED = TieredTariff(
    "res", 1, datetime(2026, 1, 1, tzinfo=SH), (2_760_000, 4_800_000), (5283, 5783, 8283)
)
BOOK = TariffBook([TOU, FLAT, FLAT_V2, TIERED], seasons={"tou": (WEEKEND,)})


def ms(when: datetime) -> int:
    return to_us(when) // 1000


def reading(meter: str, when: datetime | int, energy: int | None, flags: int = 0, **regs: int):
    ts = when if isinstance(when, int) else ms(when)
    values = {} if energy is None else {Quantity.ENERGY_IMPORT: energy}
    for name, value in regs.items():
        values[REGISTERS[int(name[1]) - 1]] = value
    return Reading(meter, ts, values, flags)


# --- the oracle ------------------------------------------------------------------------


@dataclass
class _Account:
    type: AccountType
    levels: Thresholds
    trip: bool
    balance: int
    year: AccountYear
    opened: date | None
    tripped: bool = False
    state: PrepaidState = PrepaidState.NORMAL


class Oracle:
    """The Charger's per-reading function (gateway.charging.rate_reading, which rates
    with gateway.billing.rate) and its balance and state rule, one reading at a time."""

    def __init__(self, book: TariffBook, calendar: BillingYear) -> None:
        self.book = book
        self.calendar = calendar
        self.billing: dict[str, Billing | None] = {}
        self.rows: dict[str, RatingRow] = {}
        self.accounts: dict[str, _Account] = {}

    def add_account(self, name: str, **kw: Any) -> None:
        acc = self.accounts[name] = _Account(**kw)
        acc.state = self._evaluate(acc, acc.balance)

    def _evaluate(self, acc: _Account, balance: int) -> PrepaidState:
        return evaluate(
            balance,
            acc.levels,
            account_type=acc.type,
            trip_on_arrears=acc.trip,
            tripped=acc.tripped,
        )

    def settle(self, name: str, balance: int, ts: int) -> StateChange | None:
        acc = self.accounts[name]
        acc.balance = balance
        new = self._evaluate(acc, balance)
        if new == PrepaidState.DUE_TO_TRIP:
            acc.tripped = True
        old, acc.state = acc.state, new
        return None if new == old else StateChange(name, ts, old, new, balance)

    def post(self, r: Reading) -> tuple[str, tuple[ChargeLine, ...], int | None, Any]:
        billing = self.billing[r.meter]
        if billing is None:
            return "not_charged", (), None, None
        acc = self.accounts[billing.account]
        try:
            rated = rate_reading(
                self.rows.get(r.meter), r, billing, self.book, acc.year, self.calendar
            )
        except (ValueError, IndexError):  # e.g. prorated thresholds longer than the tiers
            return "error", (), acc.balance, None
        if rated.state is not None:
            self.rows[r.meter] = rated.state
        if rated.year is not None:
            acc.year = rated.year
        change = None
        status = rated.status
        if status == "rated" and acc.type == "unbilled":
            status = "unbilled"
        elif status == "rated":
            change = self.settle(billing.account, acc.balance - rated.amount, r.ts_ms)
        return status, rated.lines, acc.balance, change


# --- both at once ----------------------------------------------------------------------


class Pair:
    """A BatchRater on ``engine`` and the oracle, set up alike."""

    def __init__(
        self, book: TariffBook, engine: ModuleType, calendar: BillingYear | None = None
    ) -> None:
        calendar = calendar or BillingYear()
        self.rater = BatchRater(book, engine=engine, calendar=calendar)
        self.oracle = Oracle(book, calendar)

    def account(
        self,
        name: str,
        type: AccountType,
        levels: Thresholds,
        trip: bool,
        balance: int,
        year: int = 0,
        opened: date | None = None,
        year_end: datetime | None = None,
    ) -> None:
        self.rater.add_account(
            name,
            account_type=type,
            thresholds=levels,
            trip_on_arrears=trip,
            balance=balance,
            year_wh=year,
            opened=opened,
            year_end_us=None if year_end is None else to_us(year_end),
        )
        self.oracle.add_account(
            name,
            type=type,
            levels=levels,
            trip=trip,
            balance=balance,
            year=AccountYear(year, None if year_end is None else year_end.astimezone(UTC)),
            opened=opened,
        )

    def meter(
        self, name: str, account: str, tariff: str | None, dlt645: bool = False, ratio: int = 1
    ) -> None:
        rollover = REGISTER_RANGE_WH * ratio if dlt645 else 0
        self.rater.add_meter(name, account, tariff, rollover_wh=rollover, ratio=ratio)
        acc = self.oracle.accounts[account]
        self.oracle.billing[name] = (
            None
            if tariff is None
            else Billing(name, account, tariff, acc.type == "unbilled", dlt645, ratio, acc.opened)
        )

    def batch(self, readings: Sequence[Reading]) -> BatchResult:
        result = self.rater.rate(readings)
        assert len(result) == len(readings)
        for r, outcome in zip(readings, result, strict=True):
            status, lines, balance, change = self.oracle.post(r)
            assert (outcome.meter, outcome.ts_ms) == (r.meter, r.ts_ms)
            assert outcome.status.replace("no_tariff", "baseline") == status
            assert outcome.lines == lines
            if status == "rated":
                assert outcome.amount == sum(line.amount for line in lines)
            else:
                assert outcome.amount == 0
            if balance is not None:
                assert outcome.balance == balance
            assert outcome.change == change
            for line in lines:
                key = (line.tariff_id, line.version, line.key)
                assert outcome.totals[key] == self.oracle.rows[r.meter].totals[key]
        self.check_state()
        return result

    def top_up(self, account: str, amount: int, ts: int) -> None:
        new = self.rater.balance(account) + amount
        assert self.rater.set_balance(account, new, ts) == self.oracle.settle(account, new, ts)

    def check_state(self) -> None:
        for name in self.oracle.billing:
            row = self.oracle.rows.get(name)
            if row is None:
                assert self.rater.last(name) is None
                continue
            used = {k: v for k, v in row.totals.items() if v.energy_wh or v.posted}
            assert self.rater.totals(name) == used
            assert self.rater.last(name) == (row.last_ts_ms, row.last_energy_wh)
            assert self.rater.registers(name) == row.slots
        for name, acc in self.oracle.accounts.items():
            assert self.rater.balance(name) == acc.balance
            assert self.rater.year_wh(name) == acc.year.year_wh
            assert self.rater.year_end(name) == acc.year.year_end
            assert self.rater.prepaid_state(name) == acc.state
            assert self.rater.tripped(name) == acc.tripped


# --- hand-written cases ----------------------------------------------------------------


def prepaid(pair: Pair, name: str = "A", balance: int = 1_000_000, **kw: Any) -> None:
    pair.account(name, type="prepaid", levels=LEVELS, trip=True, balance=balance, **kw)


def test_tou_across_2200_and_midnight_into_a_weekend(engine: ModuleType) -> None:
    # Friday 2026-03-06 21:40 -> Saturday 00:30, 1700 Wh over 170 minutes:
    # peak 21:40-22:00 (20 min) 200 Wh x 9000 = 1800; valley 22:00-24:00 (120 min)
    # 1200 Wh x 3000 = 3600; Saturday is a weekend (flat all day) 00:00-00:30 300 Wh x 6000
    # = 1800.  Total 7200.
    pair = Pair(BOOK, engine)
    prepaid(pair, year_end=datetime(2027, 1, 1, tzinfo=SH))
    pair.meter("m", "A", "tou")
    start, end = datetime(2026, 3, 6, 21, 40, tzinfo=SH), datetime(2026, 3, 7, 0, 30, tzinfo=SH)
    result = pair.batch([reading("m", start, 10_000), reading("m", end, 11_700)])
    lines = result[1].lines
    assert [(ln.key, ln.energy_wh, ln.amount) for ln in lines] == [
        ("slot:2", 200, 1800),
        ("slot:4", 1200, 3600),
        ("slot:3", 300, 1800),
    ]
    assert lines[1].t0 == datetime(2026, 3, 6, 22, tzinfo=SH)
    assert lines[2].t0 == datetime(2026, 3, 7, tzinfo=SH)
    assert pair.rater.balance("A") == 1_000_000 - 7200
    assert pair.rater.fallbacks.total() == 0 and pair.rater.rated == 2  # all in the kernel


def test_tou_registers_split_by_the_meter(engine: ModuleType) -> None:
    # Same span, the meter's own registers: T1 +0, T2 +500, T3 +200, T4 +1000 (1700 Wh,
    # the total): peak 500 x 9000 = 4500, valley 1000 x 3000 = 3000, flat 200 x 6000 = 1200.
    # Then registers summing 60 Wh away from the total (more than 4 x 10 Wh): not used.
    pair = Pair(BOOK, engine)
    prepaid(pair)
    pair.meter("m", "A", "tou")
    start, end = datetime(2026, 3, 6, 21, 40, tzinfo=SH), datetime(2026, 3, 7, 0, 30, tzinfo=SH)
    result = pair.batch(
        [
            reading("m", start, 10_000, t1=0, t2=5000, t3=100, t4=7000),
            reading("m", end, 11_700, t1=0, t2=5500, t3=300, t4=8000),
            reading("m", end + timedelta(hours=1), 12_700, t1=0, t2=5500, t3=360, t4=9000),
            reading("m", end + timedelta(hours=2), 13_700, t2=5500, t3=360, t4=9000),
        ]
    )
    assert [(ln.key, ln.energy_wh, ln.amount, ln.apportioned) for ln in result[1].lines] == [
        ("slot:2", 500, 4500, False),
        ("slot:4", 1000, 3000, False),
        ("slot:3", 200, 1200, False),
    ]
    assert [ln.apportioned for ln in result[2].lines] == [True]  # 1060 Wh vs 1000
    assert all(ln.apportioned for ln in result[3].lines)  # three of four: by time
    assert pair.rater.registers("m") is None


def test_halves_round_up_in_time_shares_and_in_costs(engine: ModuleType) -> None:
    # Monday 21:40 -> 22:20, 1001 Wh: 20 minutes each side of 22:00 -> 500.5 Wh, the
    # cumulative share rounds half up: peak 501 Wh x 9000 = 4509, valley 500 x 3000 = 1500.
    # Flat at 0.0500 yuan/kWh (500): 1 Wh costs 0.5 -> 1, 2 Wh 1.0 -> 1, 3 Wh 1.5 -> 2.
    half = FlatTariff("half", 1, datetime(2026, 1, 1, tzinfo=SH), 500)
    pair = Pair(TariffBook([TOU, half]), engine)
    prepaid(pair)
    pair.meter("t", "A", "tou")
    pair.meter("h", "A", "half")
    t0 = datetime(2026, 3, 2, 21, 40, tzinfo=SH)
    minute = 60_000
    result = pair.batch(
        [
            reading("t", t0, 0),
            reading("t", t0 + timedelta(minutes=40), 1001),
            reading("h", t0, 0),
            *[reading("h", ms(t0) + k * minute, k) for k in (1, 2, 3)],
        ]
    )
    assert [(ln.key, ln.energy_wh, ln.amount) for ln in result[1].lines] == [
        ("slot:2", 501, 4509),
        ("slot:4", 500, 1500),
    ]
    assert [o.amount for o in result[3:]] == [1, 0, 1]


def test_tier_boundary_inside_an_interval(engine: ModuleType) -> None:
    # The account has used 2,759,500 Wh this year; 1000 Wh over one hour crosses the first
    # threshold (2,760,000) half way: tier 1 500 Wh x 5283 = 2641.5 -> 2642 (half up),
    # tier 2 500 Wh x 5783 = 2891.5 -> 2892; the split time is 30 minutes in.
    pair = Pair(BOOK, engine)
    prepaid(pair, year=2_759_500)
    pair.meter("m", "A", "res")
    t0 = datetime(2026, 3, 6, 10, tzinfo=SH)
    result = pair.batch([reading("m", t0, 0), reading("m", t0 + timedelta(hours=1), 1000)])
    lines = result[1].lines
    assert [(ln.key, ln.energy_wh, ln.amount) for ln in lines] == [
        ("tier:1", 500, 2642),
        ("tier:2", 500, 2892),
    ]
    assert lines[0].t1 == lines[1].t0 == t0 + timedelta(minutes=30)
    assert pair.rater.year_wh("A") == 2_760_500


@pytest.mark.parametrize("size", [1, 7, 200, 1000])
def test_thousand_one_wh_intervals_cost_exactly_one_kwh(engine: ModuleType, size: int) -> None:
    # 1000 readings 1 Wh apart at 0.6128 yuan/kWh: each alone is 6.128 units; posted
    # round(cum x price) - posted, the 1000 charges sum to exactly 1 kWh = 6128.
    pair = Pair(BOOK, engine)
    prepaid(pair)
    pair.meter("m", "A", "flat")
    t = ms(datetime(2026, 3, 2, 9, tzinfo=SH))
    readings = [reading("m", t + k * 1000, 50_000 + k) for k in range(1001)]
    amounts: list[int] = []
    for at in range(0, len(readings), size):
        amounts += [o.amount for o in pair.batch(readings[at : at + size])]
    assert sum(amounts) == 6128
    assert set(amounts[1:]) == {6, 7}
    assert pair.rater.totals("m") == {("flat", 1, "flat"): Running(1000, 6128)}


def test_rollover_fall_discontinuity_and_untrusted_time(engine: ModuleType) -> None:
    pair = Pair(BOOK, engine)
    prepaid(pair)
    pair.meter("f", "A", "flat", dlt645=True)  # its register wraps at 10**9 Wh
    pair.meter("t", "A", "tou")
    t = ms(datetime(2026, 3, 2, 9, tzinfo=SH))
    result = pair.batch(
        [
            reading("f", t, 999_999_000),
            reading("t", t, 5_000),
            reading("f", t + 60_000, 1_000, FLAG_ROLLOVER),  # 2000 Wh across the wrap
            reading("t", t + 60_000, 5_100, FLAG_TIME_UNTRUSTED),  # deferred
            reading("f", t + 120_000, 500),  # an unflagged fall: new baseline
            reading("f", t + 180_000, 900, FLAG_DISCONTINUITY),  # baseline again
            reading("t", t + 180_000, 5_300),  # the deferred stretch, by time
            reading("f", t + 240_000, None),
        ]
    )
    assert [o.status for o in result] == [
        "baseline",
        "baseline",
        "rated",
        "deferred",
        "baseline",
        "baseline",
        "rated",
        "no_energy",
    ]
    assert result[2].lines[0].energy_wh == 2000
    assert result[6].lines[0].energy_wh == 300
    # A clock stamping 2040: a flat tariff is rated at the last trusted time (a zero-length
    # interval) and the meter keeps that time.
    later = reading("f", ms(datetime(2040, 1, 1, tzinfo=SH)), 1_500, FLAG_TIME_UNTRUSTED)
    lines = pair.batch([later])[0].lines
    assert [(ln.energy_wh, ln.t0, ln.t1) for ln in lines] == [(600, lines[0].t0, lines[0].t0)]
    assert pair.rater.last("f") == (t + 180_000, 1_500)


def test_states_alarms_trip_top_up_and_close(engine: ModuleType) -> None:
    # Balance 60,000; 3 kWh at 0.6128 yuan/kWh = 18,384 units per reading.
    pair = Pair(BOOK, engine)
    prepaid(pair, balance=60_000)
    pair.meter("m", "A", "flat")
    t = ms(datetime(2026, 3, 2, 9, tzinfo=SH))
    steps = [reading("m", t + k * 60_000, k * 3_000) for k in range(6)]
    result = pair.batch(steps)
    changes = [(c.old.value, c.new.value) for c in result.changes]
    # 60000 -> 41616 (alarm1) -> 23232 -> 4848 (alarm2) -> -13536 (+5000 overdraft <= 0:
    # trip) -> -31920
    assert changes == [("normal", "alarm1"), ("alarm1", "alarm2"), ("alarm2", "due_to_trip")]
    assert pair.rater.tripped("A")
    pair.top_up("A", 20_000, t)  # -31920 + 20000 = -11920: still held tripped
    assert pair.rater.prepaid_state("A") == PrepaidState.DUE_TO_TRIP
    pair.top_up("A", 100_000, t)  # 88080 > close_allow 10000: may close
    assert pair.rater.prepaid_state("A") == PrepaidState.MAY_CLOSE
    change = pair.rater.relay_closed("A", t)
    assert change == StateChange("A", t, PrepaidState.MAY_CLOSE, PrepaidState.NORMAL, 88_080)
    assert not pair.rater.tripped("A")


def test_version_change_year_end_and_proration_fall_back_to_python(engine: ModuleType) -> None:
    # FLAT_V2 takes effect on 2026-03-07 12:00: the interval across it is rated in Python.
    # Billing years start on 7 March: B, opened 2025-09-01, has prorated thresholds until
    # then (worked out in Python once, then used by the kernel), the tariff's after; the
    # interval across midnight of 7 March is split there, in Python.
    pair = Pair(BOOK, engine, BillingYear(start=(3, 7)))
    end = datetime(2026, 3, 7, tzinfo=SH)
    prepaid(pair, "A", year_end=end)
    prepaid(pair, "B", year=1_500_000, opened=date(2025, 9, 1), year_end=end)
    pair.meter("f", "A", "flat")
    pair.meter("r", "B", "res")
    t0 = datetime(2026, 3, 6, 20, tzinfo=SH)
    pair.batch([reading("f", t0, 0), reading("r", t0, 0)])
    result = pair.batch(
        [
            reading("r", t0 + timedelta(hours=1), 100_000),  # prorated: worked out
            reading("r", t0 + timedelta(hours=2), 200_000),  # kernel
            reading("f", t0 + timedelta(hours=10), 100),  # across the yearly reset
            reading("r", t0 + timedelta(hours=5), 250_000),  # across the yearly reset
            reading("r", t0 + timedelta(hours=6), 350_000),  # the new year: worked out
            reading("f", t0 + timedelta(hours=17), 200),  # across 12:00: two versions
            reading("f", t0 + timedelta(hours=18), 300),
            reading("r", t0 + timedelta(hours=7), 450_000),
        ]
    )
    assert [o.fallback for o in result] == [
        "thresholds",
        None,
        "year_end",
        "year_end",
        "thresholds",
        "version_change",
        None,
        None,
    ]
    # Opened 2025-09-01: 187 of the year's 365 days left, the first threshold prorated to
    # 2,760,000 x 187 / 365 = 1,414,027 Wh; B's 1,600,000 Wh are past it: tier 2.  In
    # the new year B is no longer new: the tariff's thresholds (tier 1 again).
    assert [ln.key for ln in result[1].lines] == ["tier:2"]
    assert [ln.key for ln in result[7].lines] == ["tier:1"]
    assert pair.rater.meter_state("r").thresholds is None
    assert [ln.version for ln in result[5].lines] == [1, 2]
    assert pair.rater.year_end("B") == datetime(2027, 3, 7, tzinfo=SH)


def test_tables_unknown_to_the_kernel_and_full_line_arrays(engine: ModuleType) -> None:
    # Nine thresholds are more than the kernel holds: rated in Python.  A 23-hour TOU
    # interval gives 6 lines; 200 meters of them outgrow the first line arrays (4 x 200 + 64).
    many = TieredTariff(
        "many", 1, datetime(2026, 1, 1, tzinfo=SH), tuple(range(1, 10)), tuple(range(10, 20))
    )
    book = TariffBook([TOU, many], seasons={"tou": (WEEKEND,)})
    pair = Pair(book, engine)
    prepaid(pair)
    pair.meter("m", "A", "many")
    start = datetime(2026, 3, 2, 0, 30, tzinfo=SH)
    pair.batch([reading("m", start, 0)])
    pair.batch([reading("m", start + timedelta(hours=1), 20)])
    assert pair.rater.fallbacks == {"unsupported": 1}
    meters = [f"t{k}" for k in range(200)]
    for name in meters:
        pair.meter(name, "A", "tou")
    pair.batch([reading(name, start, 0) for name in meters])
    result = pair.batch([reading(name, start + timedelta(hours=23), 2300) for name in meters])
    assert [len(o.lines) for o in result] == [6] * 200
    assert pair.rater.fallbacks == {"unsupported": 1}


def test_the_builds_constants_match_the_layout(engine: ModuleType) -> None:
    assert set(engine.LAYOUT) == set(_engine_py.LAYOUT)  # every constant, in both
    for name, value in engine.LAYOUT.items():
        assert getattr(layout, name) == value, name


# --- the property ----------------------------------------------------------------------


def _slots(draw: st.DrawFn) -> tuple[TouSlot, ...]:
    starts = sorted(draw(st.sets(st.integers(1, 47), max_size=8)))
    table = [TouSlot(time(0), draw(st.integers(1, 4)))]
    for half in starts:
        table.append(TouSlot(time(half // 2, 30 * (half % 2)), draw(st.integers(1, 4))))
    return tuple(table)


@st.composite
def books(draw: st.DrawFn) -> TariffBook:
    tariffs: list[Tariff] = []
    year = datetime(2026, 1, 1, tzinfo=SH)

    def effective(v: int) -> datetime:
        return year if v == 0 else BASE + timedelta(minutes=draw(st.integers(0, 12 * 60)))

    prices = st.integers(0, 20_000)
    for v in range(draw(st.integers(1, 2))):
        tariffs.append(FlatTariff("F", v + 1, effective(v), draw(prices)))
    for v in range(draw(st.integers(1, 2))):
        slots = _slots(draw)
        tariffs.append(
            TouTariff("T", v + 1, effective(v), slots, {s: draw(prices) for s in (1, 2, 3, 4)})
        )
    for v in range(draw(st.integers(1, 2))):
        thresholds = tuple(sorted(draw(st.lists(st.integers(0, 30_000), min_size=1, max_size=3))))
        tier_prices = tuple(draw(prices) for _ in range(len(thresholds) + 1))
        tariffs.append(TieredTariff("R", v + 1, effective(v), thresholds, tier_prices))
    seasons = {}
    if draw(st.booleans()):
        seasons["T"] = (TouSeason((1, 1), MappingProxyType({"weekend": _slots(draw)})),)
    return TariffBook(tariffs, calendar=DayCalendar(), seasons=seasons)


readings_steps = st.lists(
    st.tuples(
        st.integers(0, 3),  # meter
        st.one_of(  # seconds since the meter's last reading
            st.integers(60, 2 * 3600),
            st.integers(60, 2 * 3600),
            st.integers(3600, 12 * 3600),
            st.integers(-600, 0),
            st.integers(1, 12 * 86400),
        ),
        st.one_of(st.integers(0, 3000), st.integers(0, 3000), st.integers(-500, 0)),  # Wh
        st.sampled_from([0, 0, 0, 0, 0, FLAG_DISCONTINUITY, FLAG_ROLLOVER, FLAG_TIME_UNTRUSTED]),
        st.one_of(  # per-tariff registers: the step split by these weights, give or take
            st.none(),
            st.tuples(
                st.lists(st.integers(0, 4), min_size=4, max_size=4),
                st.integers(-30, 30),  # off the total by this much (on T4)
                st.booleans(),  # T1 missing
            ),
        ),
        st.booleans(),  # a top-up before this reading
        st.integers(0, 6),  # 0: this reading ends a batch
    ),
    min_size=5,
    max_size=60,
)


@st.composite
def setups(draw: st.DrawFn) -> dict[str, Any]:
    accounts = []
    for _ in range(2):
        alarm1 = draw(st.integers(0, 60_000))
        levels = Thresholds(
            alarm1,
            draw(st.integers(-10_000, alarm1)),
            draw(st.integers(0, 20_000)),
            draw(st.integers(0, 30_000)),
        )
        year_end = None
        if draw(st.booleans()):
            year_end = BASE + timedelta(minutes=draw(st.integers(0, 2 * 1440)))
        opened = None
        if draw(st.booleans()):
            opened = date(2025, 3, 1) + timedelta(days=draw(st.integers(0, 400)))
        accounts.append(
            {
                "type": draw(st.sampled_from(["prepaid", "prepaid", "postpaid", "unbilled"])),
                "levels": levels,
                "trip": draw(st.booleans()),
                "balance": draw(st.integers(-20_000, 150_000)),
                "year": draw(st.integers(0, 30_000)),
                "opened": opened,
                "year_end": year_end,
            }
        )
    meters = [
        (
            draw(st.integers(0, 1)),  # account
            draw(st.sampled_from(["F", "T", "R", "T", "R", None])),
            draw(st.booleans()),  # DL/T 645: its registers wrap
            draw(st.integers(1, 3)),  # ratio
        )
        for _ in range(4)
    ]
    calendar = BillingYear(start=draw(st.sampled_from([(1, 1), (3, 7), (3, 8)])))
    return {"accounts": accounts, "meters": meters, "calendar": calendar}


@settings(max_examples=500)
@given(books(), setups(), readings_steps)
def test_kernel_matches_the_chargers_rating(
    engine: ModuleType, book: TariffBook, setup: dict[str, Any], steps: list[Any]
) -> None:
    pair = Pair(book, engine, setup["calendar"])
    twin = Pair(book, _engine_py, setup["calendar"])  # the twin, alongside
    for p in (pair, twin):
        for n, acc in enumerate(setup["accounts"]):
            p.account(f"A{n}", **acc)
        for n, (acc, tariff, dlt645, ratio) in enumerate(setup["meters"]):
            p.meter(f"m{n}", f"A{acc}", tariff, dlt645, ratio)
    span = [REGISTER_RANGE_WH * ratio for _, _, _, ratio in setup["meters"]]
    clock = [ms(BASE)] * 4
    energy = [s - 4_000 for s in span]  # DL/T 645 meters wrap during the run
    regs: list[list[int]] = [[1000] * 4 for _ in range(4)]
    batch: list[Reading] = []

    def flush() -> None:
        if batch:
            a, b = pair.batch(batch), twin.batch(batch)
            for outcome in a:
                event(f"{outcome.status} {outcome.fallback or ''}".strip())
                keys = sorted({line.key.split(":")[0] for line in outcome.lines})
                regs = not all(line.apportioned for line in outcome.lines)
                event(f"lines {len(outcome.lines)} {keys} registers {regs}")
            assert list(a) == list(b)  # compiled and twin: the same outcomes
            assert a.amount == b.amount and a.changes == b.changes
        batch.clear()

    for meter, dt, de, flags, registers, top_up, end in steps:
        if top_up:
            flush()
            for p in (pair, twin):
                p.top_up("A0", 30_000, clock[meter])
        clock[meter] += dt * 1000
        energy[meter] += de
        if flags & FLAG_ROLLOVER:
            energy[meter] %= span[meter]
        present = {}
        if registers is not None:
            weights, off, no_t1 = registers
            whole = sum(weights) or 1
            parts = [de * w // whole for w in weights]
            parts[3] += de - sum(parts) + off
            for j in range(4):
                regs[meter][j] = (regs[meter][j] + parts[j]) % span[meter]
                if j or not no_t1:
                    present[f"t{j + 1}"] = regs[meter][j]
        batch.append(reading(f"m{meter}", clock[meter], max(energy[meter], 0), flags, **present))
        if end == 0:
            flush()
    flush()


def test_a_tariff_added_later_keeps_every_meters_state(engine: ModuleType) -> None:
    # A meter on a tariff the rater has not seen lays the segment arrays out anew.
    pair = Pair(BOOK, engine)
    prepaid(pair)
    pair.meter("f", "A", "flat")
    t0 = datetime(2026, 3, 2, 9, tzinfo=SH)
    pair.batch([reading("f", t0, 0), reading("f", t0 + timedelta(hours=1), 777)])
    before = pair.rater.totals("f")
    pair.meter("t", "A", "tou")
    pair.meter("r", "A", "res")
    # 777 Wh x 0.6128 yuan/kWh = 4761.456 -> 4761
    assert pair.rater.totals("f") == before == {("flat", 1, "flat"): Running(777, 4761)}
    later = t0 + timedelta(hours=2)
    pair.batch([reading("t", t0, 0), reading("r", t0, 0), reading("f", later, 1000)])
    pair.batch([reading(m, later + timedelta(hours=1), 2000) for m in ("t", "r", "f")])


@given(
    st.integers(-100_000, 100_000),
    st.integers(-50_000, 50_000),
    st.integers(0, 50_000),
    st.integers(0, 30_000),
    st.integers(0, 30_000),
    st.sampled_from(["prepaid", "postpaid", "unbilled"]),
    st.booleans(),
    st.booleans(),
)
def test_kernel_states_are_prepaid_evaluate(
    engine: ModuleType,
    balance: int,
    alarm2: int,
    above: int,
    overdraft: int,
    close_allow: int,
    kind: AccountType,
    trips: bool,
    tripped: bool,
) -> None:
    levels = Thresholds(alarm2 + above, alarm2, overdraft, close_allow)
    rater = BatchRater(BOOK, engine=engine)
    rater.add_account(
        "A", account_type=kind, thresholds=levels, trip_on_arrears=trips, tripped=tripped
    )
    expected = evaluate(balance, levels, account_type=kind, trip_on_arrears=trips, tripped=tripped)
    assert layout.STATES[engine.evaluate_state(rater.state, 0, balance)] == expected.value


def test_a_small_batch_outgrowing_the_reused_arrays(engine: ModuleType) -> None:
    # Ten meters, each a 5-day time-of-use interval (about 25 lines): 250 lines, more
    # than the arrays small batches share (16 x 4 + MAX_PARTS): they grow, results exact.
    pair = Pair(BOOK, engine)
    prepaid(pair, year_end=datetime(2027, 1, 1, tzinfo=SH))
    meters = [f"t{k}" for k in range(10)]
    for name in meters:
        pair.meter(name, "A", "tou")
    start = datetime(2026, 3, 2, 0, 30, tzinfo=SH)
    pair.batch([reading(name, start, 0) for name in meters])
    result = pair.batch([reading(name, start + timedelta(days=5), 9_000) for name in meters])
    assert sum(len(o.lines) for o in result) > 16 * 4 + layout.MAX_PARTS
    assert pair.rater.fallbacks.total() == 0


def test_tou_across_a_daylight_saving_change(engine: ModuleType) -> None:
    # Slot tables are wall time; in Berlin the night of 28-29 March 2026 is an hour short.
    # 21:00 -> 09:00 wall is 11 real hours, 1100 Wh: peak 21-22 (1 h) 100 Wh x 9000 = 900,
    # valley 22-08 wall (9 real hours) 900 Wh x 3000 = 2700, peak 08-09 100 Wh = 900.
    berlin = ZoneInfo("Europe/Berlin")
    book = TariffBook([TOU], calendar=DayCalendar(timezone="Europe/Berlin"))
    pair = Pair(book, engine)
    prepaid(pair, year_end=datetime(2027, 1, 1, tzinfo=SH))
    pair.meter("t", "A", "tou")
    t0, t1 = datetime(2026, 3, 28, 21, tzinfo=berlin), datetime(2026, 3, 29, 9, tzinfo=berlin)
    result = pair.batch([reading("t", t0, 0), reading("t", t1, 1100)])
    assert [(ln.key, ln.energy_wh, ln.amount) for ln in result[1].lines] == [
        ("slot:2", 100, 900),
        ("slot:4", 900, 2700),
        ("slot:2", 100, 900),
    ]
    assert pair.rater.fallbacks.total() == 0
