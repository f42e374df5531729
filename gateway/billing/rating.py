"""Rating: one consumption interval of one meter -> charge lines, exact to 0.0001 yuan.

An interval is split where a tariff version takes effect, at time-of-use slot
boundaries (local wall time, from the day's season and day-type table) and where
the account's billing-year consumption crosses a tier threshold.  Energy goes to the
pieces from the meter's per-tariff registers when it keeps them (every piece
time-of-use), otherwise by time (constant power).

The rounding rule (design.md, "Money and energy"): per (meter, tariff id, version,
segment key) the state keeps cumulative energy and cumulative posted amount; a line
posts ``cumulative_cost(cum_energy, price) - posted``, so any split of the same
consumption costs the same.  Amounts are charges (positive = the tenant owes more).

Pure: no I/O, no clock.  The caller journals the returned state with the lines.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import ModuleType

from gateway import fastpath
from gateway.billing.tariffs import TariffBook
from gateway.config.model import FlatTariff, Tariff, TieredTariff, TouTariff

__all__ = [
    "Adjustment",
    "ChargeLine",
    "Interval",
    "MeterState",
    "Rating",
    "Rerating",
    "Running",
    "SegmentKey",
    "rate",
    "rerate",
]

SegmentKey = tuple[str, int, str]
"""(tariff id, version, ``flat`` | ``slot:N`` | ``tier:N``): one rounding accumulator."""

_US = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Interval:
    """Consumption of one meter between two readings (times timezone-aware)."""

    t0: datetime  #: previous reading
    t1: datetime  #: this reading
    energy_wh: int  #: forward energy delta x ratio (CT x PT), Wh
    #: per-tariff register deltas x ratio, by slot (DL/T 645 00010100..00010400).  Used
    #: instead of ``energy_wh`` when every piece of the interval is time-of-use.
    slot_wh: Mapping[int, int] | None = None
    estimated: bool = False  #: spans a communication gap: lines are marked estimated


@dataclass(frozen=True, slots=True)
class Running:
    """One accumulator of the rounding rule."""

    energy_wh: int = 0  #: cumulative energy rated on this segment key
    posted: int = 0  #: cumulative amount posted for it, 0.0001 yuan


@dataclass(frozen=True, slots=True)
class MeterState:
    """What rating carries from one interval to the next, for one meter."""

    meter_id: str
    account_id: str
    tariff_id: str
    year_wh: int = 0  #: the ACCOUNT's billing-year consumption so far (all its meters), Wh
    #: prorated tier thresholds; None: the tariff's (also for a tiered version with another
    #: number of tiers than they were prorated for)
    thresholds: tuple[int, ...] | None = None
    #: when the tier total resets (the yearly settlement date).  An interval crossing it
    #: is split there; after it the total restarts at 0, the thresholds are the tariff's
    #: and this is None until the caller sets the next one.
    year_end: datetime | None = None
    totals: Mapping[SegmentKey, Running] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class ChargeLine:
    """One segment of an interval: one tariff version, one slot or tier."""

    meter_id: str
    account_id: str
    tariff_id: str
    version: int
    key: str  #: ``flat``, ``slot:N`` (1 sharp .. 4 valley) or ``tier:N`` (1 = first tier)
    t0: datetime  #: UTC start of the segment
    t1: datetime  #: UTC end of the segment
    energy_wh: int
    price: int  #: 0.0001 yuan per kWh
    amount: int  #: charge posted for this line, 0.0001 yuan
    estimated: bool  #: the interval spanned a communication gap
    apportioned: bool  #: energy split by time (no per-tariff registers used)


@dataclass(frozen=True, slots=True)
class Rating:
    lines: tuple[ChargeLine, ...]
    state: MeterState  #: the meter's state after the interval

    @property
    def amount(self) -> int:
        return sum(line.amount for line in self.lines)


@dataclass(frozen=True, slots=True)
class _Piece:
    t0: datetime
    t1: datetime
    tariff: Tariff
    slot: int | None  #: time-of-use slot, None for flat and tiered


def rate(
    state: MeterState,
    interval: Interval,
    book: TariffBook,
    *,
    max_gap: timedelta | None = None,
    engine: ModuleType | None = None,
) -> Rating:
    """Rate ``interval`` for the meter in ``state``; return the lines and the new state.

    An interval longer than ``max_gap`` whose energy is apportioned by time spans a
    communication gap: its lines are marked estimated (as are those of an interval
    flagged so).  ``engine`` is a fast-path module (default: the one
    :mod:`gateway.fastpath` loaded).
    ``state`` is not changed.  Raises ValueError for naive times, a negative energy or
    an interval that ends before it starts; KeyError when no tariff version is in force.
    """
    if interval.t0.tzinfo is None or interval.t1.tzinfo is None:
        raise ValueError(f"meter {state.meter_id}: interval times must be timezone-aware")
    t0, t1 = interval.t0.astimezone(UTC), interval.t1.astimezone(UTC)
    if t1 < t0:
        raise ValueError(f"meter {state.meter_id}: interval ends before it starts")
    slot_wh = interval.slot_wh
    if interval.energy_wh < 0 or (slot_wh and any(v < 0 for v in slot_wh.values())):
        raise ValueError(f"meter {state.meter_id}: negative energy")
    cost: Callable[[int, int], int] = (engine or fastpath).cumulative_cost
    year_end = state.year_end.astimezone(UTC) if state.year_end is not None else None
    extra = [year_end] if year_end is not None and t0 < year_end < t1 else []
    pieces = _pieces(state.tariff_id, t0, t1, book, extra)
    use_registers = bool(slot_wh) and all(p.slot is not None for p in pieces)
    if slot_wh and use_registers:
        energies = _by_registers(pieces, slot_wh)
    else:
        energies = _apportion(interval.energy_wh, [_us(p.t1 - p.t0) for p in pieces])
    parts, year, reset = _tier_parts(pieces, energies, state, year_end)
    gap = max_gap is not None and not use_registers and t1 - t0 > max_gap
    estimated = interval.estimated or gap
    totals = dict(state.totals)
    lines: list[ChargeLine] = []
    for piece, key, a, b, energy in _merge(parts, year_end):
        tariff = piece.tariff
        price = _price(tariff, key)
        seg: SegmentKey = (tariff.id, tariff.version, key)
        run = totals.get(seg, Running())
        cum = run.energy_wh + energy
        amount = cost(cum, price) - run.posted
        totals[seg] = Running(cum, run.posted + amount)
        lines.append(
            ChargeLine(
                state.meter_id,
                state.account_id,
                tariff.id,
                tariff.version,
                key,
                a,
                b,
                energy,
                price,
                amount,
                estimated,
                not use_registers,
            )
        )
    after = replace(state, year_wh=year, totals=totals)
    if reset:
        after = replace(after, thresholds=None, year_end=None)
    return Rating(tuple(lines), after)


def _pieces(
    tariff_id: str, t0: datetime, t1: datetime, book: TariffBook, extra: list[datetime]
) -> list[_Piece]:
    """Split [t0, t1) at version changes and ``extra``, then TOU at slot boundaries."""
    cuts = sorted({t0, *book.changes(tariff_id, t0, t1), *extra, t1})
    if len(cuts) == 1:  # zero-length interval
        cuts.append(t1)
    pieces: list[_Piece] = []
    for a, b in itertools.pairwise(cuts):
        tariff = book.at(tariff_id, a)
        if not isinstance(tariff, TouTariff):
            pieces.append(_Piece(a, b, tariff, None))
            continue
        inner = sorted(x for x in _slot_starts(tariff, a, b, book) if a < x < b)
        edges = [a, *inner, b]
        for x, y in itertools.pairwise(edges):
            pieces.append(_Piece(x, y, tariff, _slot_at(tariff, x, book)))
    return pieces


def _slot_starts(tariff: TouTariff, a: datetime, b: datetime, book: TariffBook) -> set[datetime]:
    tz = book.calendar.tz
    day, last = a.astimezone(tz).date(), b.astimezone(tz).date()
    starts: set[datetime] = set()
    while day <= last:
        midnight = datetime(day.year, day.month, day.day, tzinfo=tz)
        starts.add(midnight.astimezone(UTC))
        for slot in book.slot_table(tariff, day):
            wall = datetime.combine(day, slot.start.replace(tzinfo=None), tzinfo=tz)
            starts.add(wall.astimezone(UTC))
        day += timedelta(days=1)
    return starts


def _slot_at(tariff: TouTariff, instant: datetime, book: TariffBook) -> int:
    local = instant.astimezone(book.calendar.tz)
    table = book.slot_table(tariff, local.date())
    index = bisect_right([s.start for s in table], local.time().replace(tzinfo=None)) - 1
    return table[index].slot


def _us(span: timedelta) -> int:
    return span // _US


def _apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` by ``weights`` via rounded cumulative shares: sums exactly."""
    whole = sum(weights)
    if whole == 0:  # a zero-length interval: everything on the first piece
        return [total] + [0] * (len(weights) - 1)
    out, done, acc = [], 0, 0
    for w in weights:
        acc += w
        upto = (2 * total * acc + whole) // (2 * whole)
        out.append(upto - done)
        done = upto
    return out


def _by_registers(pieces: list[_Piece], slot_wh: Mapping[int, int]) -> list[int]:
    """Each register's energy over the pieces of its slot by time (all, if none match)."""
    energies = [0] * len(pieces)
    for slot, wh in sorted(slot_wh.items()):
        idx = [i for i, p in enumerate(pieces) if p.slot == slot] or list(range(len(pieces)))
        shares = _apportion(wh, [_us(pieces[i].t1 - pieces[i].t0) for i in idx])
        for i, share in zip(idx, shares, strict=True):
            energies[i] += share
    return energies


def _tier_parts(
    pieces: list[_Piece], energies: list[int], state: MeterState, year_end: datetime | None
) -> tuple[list[tuple[_Piece, str, datetime, datetime, int]], int, bool]:
    """Key each piece's energy; a tiered piece splits where the year crosses a threshold.

    Returns the parts, the billing-year total after them and whether it was reset.
    """
    year, prorated, reset = state.year_wh, state.thresholds, False
    parts: list[tuple[_Piece, str, datetime, datetime, int]] = []
    for piece, energy in zip(pieces, energies, strict=True):
        if year_end is not None and not reset and piece.t0 >= year_end:
            year, prorated, reset = 0, None, True
        tariff = piece.tariff
        if isinstance(tariff, TouTariff):
            parts.append((piece, f"slot:{piece.slot}", piece.t0, piece.t1, energy))
        elif isinstance(tariff, FlatTariff):
            parts.append((piece, "flat", piece.t0, piece.t1, energy))
        else:
            thresholds = tariff.thresholds
            if prorated is not None and len(prorated) == len(thresholds):
                thresholds = prorated  # prorated for another tier count: the version's own
            parts.extend(_tier_split(piece, energy, year, thresholds))
        year += energy
    return parts, year, reset


def _tier_split(
    piece: _Piece, energy: int, year: int, thresholds: tuple[int, ...]
) -> list[tuple[_Piece, str, datetime, datetime, int]]:
    span = _us(piece.t1 - piece.t0)
    parts: list[tuple[_Piece, str, datetime, datetime, int]] = []
    done, start = 0, piece.t0
    while True:
        tier = bisect_right(thresholds, year + done)  # 0-based tier in force
        room = thresholds[tier] - (year + done) if tier < len(thresholds) else energy - done
        take = min(energy - done, room)
        done += take
        end = piece.t1 if done == energy else piece.t0 + _US * (span * done // max(energy, 1))
        parts.append((piece, f"tier:{tier + 1}", start, end, take))
        start = end
        if done == energy:
            return parts


def _merge(
    parts: list[tuple[_Piece, str, datetime, datetime, int]], year_end: datetime | None
) -> list[tuple[_Piece, str, datetime, datetime, int]]:
    """Join neighbours of one version and key (across midnight, not across the yearly
    tier reset); drop empty parts."""
    out: list[tuple[_Piece, str, datetime, datetime, int]] = []
    for part in parts:
        piece, key, a, b, energy = part
        if out:
            prev = out[-1]
            same = prev[0].tariff is piece.tariff and prev[1] == key
            if same and prev[3] == a != year_end:
                out[-1] = (prev[0], key, prev[2], b, prev[4] + energy)
                continue
        out.append(part)
    return [p for p in out if p[4] > 0]


def _price(tariff: Tariff, key: str) -> int:
    kind, _, n = key.partition(":")
    if isinstance(tariff, FlatTariff):
        return tariff.price
    if isinstance(tariff, TouTariff):
        return tariff.prices[int(n)]
    assert isinstance(tariff, TieredTariff) and kind == "tier"
    return tariff.prices[int(n) - 1]


@dataclass(frozen=True, slots=True)
class Adjustment:
    """One re-rating correction (退补) for one account; positive: the tenant owes more."""

    account_id: str
    amount: int  #: rerated - posted, 0.0001 yuan
    rerated: int  #: what the journal's intervals cost under the corrected tariffs
    posted: int  #: what was posted for them
    reason: str


@dataclass(frozen=True, slots=True)
class Rerating:
    adjustments: tuple[Adjustment, ...]  #: one per account whose amount is not zero
    states: Mapping[str, MeterState]  #: meter id -> state after re-rating; rating goes on from it
    lines: tuple[ChargeLine, ...]  #: the re-rated lines, for the record


def rerate(
    journal: Iterable[tuple[str, Interval]],
    start: Mapping[str, MeterState],
    book: TariffBook,
    posted: Mapping[str, int],
    *,
    reason: str,
    max_gap: timedelta | None = None,
    engine: ModuleType | None = None,
) -> Rerating:
    """Re-rate journaled intervals under ``book`` (which holds the late tariff).

    ``journal`` holds (meter id, interval) in the order they were rated, from the
    states ``start`` (meter id -> state before the first of them); ``posted`` is what
    the ledger charged each account for those intervals.  One adjustment per account:
    Σ re-rated − Σ posted.  Meters of one account share its billing-year tier state
    (total, prorated thresholds, reset time), taken from its first meter in ``start``.
    """
    states = dict(start)
    year: dict[str, tuple[int, tuple[int, ...] | None, datetime | None]] = {}
    for st in start.values():
        year.setdefault(st.account_id, (st.year_wh, st.thresholds, st.year_end))
    rerated: dict[str, int] = {}
    lines: list[ChargeLine] = []
    for meter_id, interval in journal:
        st = states[meter_id]
        total, thresholds, year_end = year[st.account_id]
        before = replace(st, year_wh=total, thresholds=thresholds, year_end=year_end)
        result = rate(before, interval, book, max_gap=max_gap, engine=engine)
        after = states[meter_id] = result.state
        year[st.account_id] = (after.year_wh, after.thresholds, after.year_end)
        rerated[st.account_id] = rerated.get(st.account_id, 0) + result.amount
        lines.extend(result.lines)
    adjustments = []
    for account in sorted(set(rerated) | set(posted)):
        new, old = rerated.get(account, 0), posted.get(account, 0)
        if new != old:
            adjustments.append(Adjustment(account, new - old, new, old, reason))
    return Rerating(tuple(adjustments), states, tuple(lines))
