"""The Charger's rating on the fast path: :class:`Rating` (what the Charger holds) over
:class:`BatchRater` (batches of readings rated in memory by the fast-path kernel).

Design (Step 8): the rating state has one home, the rater's typed arrays
(``gateway/fastpath/layout.py``): each billed meter's last reading, per-tariff registers
and rounding accumulators, and each account's billing-year tier total and reset.  The
Charger keeps no copy of them (no ``RatingRow`` cache, no year per account): it builds a
:class:`Rating` at every (re)load from the store's snapshot and asks it for each reading
(:meth:`Rating.rate`: a batch of one, since the poller submits readings one at a time);
the result is the :class:`~gateway.charging.rate.Rated` that
:func:`~gateway.charging.rate.rate_reading`, the Python reference, gives for the same
state (the property tests hold the two equal), so the durable write is unchanged.  The
money stays where it was: balances, thresholds and prepaid states are the Charger's
(``_Account`` and its :class:`~gateway.prepaid.StateTracker`), moved by the amount the
rater returns; the rater's own balance and prepaid-state columns are left unused
(they are not kept in step with top-ups, relays and thresholds, and nothing reads
them).  Keeping the money in one place keeps top-ups, relays and thresholds as they
were; keeping the rating state in the arrays spares a conversion per reading.

:class:`BatchRater` holds every charged meter's and account's rating state as typed
arrays (see ``layout.py``), turns a batch of :class:`~gateway.protocols.quantities.Reading` into
arrays, runs the kernel (``rate_batch``: the compiled module or its twin, chosen as in
``gateway.fastpath``) and gives one :class:`Outcome` per reading: its charge lines,
the account's balance and a prepaid state change.

Rules per reading, those of ``gateway.charging.rate_reading``: the first reading of a
meter is its baseline; no consumption across a discontinuity; a rollover adds the
register range (x ratio) of a DL/T 645 meter; an unflagged fall is a new baseline;
an interval with no tariff version in force is not charged (new baseline); a reading
with an untrusted time does not move the meter's time: a time-of-use tariff is not
rated (deferred: nothing changes), flat and tiered ones are rated at the last trusted
time (a zero-length interval); an unbilled account's state advances but nothing is
posted.  ``gateway.charging.rate_reading`` is the reference (the tests hold the two
equal): rating is ``gateway.billing.rate``'s to the unit, and the state after a charge
that of ``gateway.prepaid.evaluate`` (held ``due_to_trip`` until
:meth:`BatchRater.relay_closed`).

Per-tariff registers (ENERGY_T1..T4) split a time-of-use interval when the reading and
the meter's previous one both have all four, none fell (a rollover adds the range) and
their deltas sum to the total within 10 Wh x ratio each; else energy goes by time.

Not thread-safe: one caller at a time (the Charger holds its lock).  Year and proration
follow ``calendar`` (a ``BillingYear``) as in the Charger.

What the kernel hands back to Python (``gateway.billing.rate`` here, counted in
:attr:`BatchRater.fallbacks` by reason): an interval in which a tariff version takes
effect, one reaching the account's yearly tier reset (or the account's first, while its
reset is not known), with a calendar the first tiered interval of each billing year and
version (its prorated thresholds are worked out then and held by the kernel), a
time-of-use interval starting more than ``MAX_SPAN_DAYS`` before the batch's last reading
(or giving more than ``MAX_PARTS`` lines), prorated thresholds not fitting the tiers, sizes past
int64 safety (``range``: energy x microseconds >= 2**61, cumulative energy > 1e12 Wh)
and versions the kernel cannot hold (``unsupported``: more than ``MAX_TIERS`` tiers,
unsorted thresholds, a season slot without a price, two versions sharing a number).

Layering: this module belongs to ``gateway.charging`` (design.md: ``gateway.fastpath``
imports nothing else of the package); it imports ``gateway.billing`` (the Python rating
for the cases above and the result types), ``gateway.prepaid`` and the kernel.

How :class:`Rating` maps an :class:`Outcome` to the reference's ``Rated``: status rated /
unbilled -> ``rated`` (with the new ``AccountYear(o.year_wh, o.year_end)``, ``o.lines``
and ``o.amount``), baseline / no_tariff -> ``baseline``, deferred and no_energy as they
are, error -> :class:`~gateway.errors.RatingError` (nothing changed, as when
``rate_reading`` raises); the meter's new ``RatingRow`` is the rater's ``last()``,
``totals()`` and ``registers()`` (the accumulators ever used: a key still at zero is
not listed, as it changes nothing).
"""

from __future__ import annotations

import logging
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from types import ModuleType
from typing import overload

from gateway import fastpath
from gateway.billing import (
    BillingYear,
    ChargeLine,
    Interval,
    MeterState,
    Running,
    TariffBook,
    rate,
)
from gateway.charging.rate import AccountYear, Billing, Rated, RatingRow
from gateway.config.model import AccountType
from gateway.errors import RatingError
from gateway.fastpath import layout as L
from gateway.fastpath.tables import SegmentKey, TableBuilder, from_us, to_us
from gateway.poller import REGISTER_RANGE_WH
from gateway.prepaid import PrepaidState, StateChange, Thresholds, evaluate
from gateway.protocols.quantities import Quantity, Reading

__all__ = ["SMALL", "STATUS", "BatchRater", "BatchResult", "Outcome", "Rating"]

_logger = logging.getLogger("gateway.charging")

SMALL = 16
"""Batches up to this size reuse the rater's result arrays (their outcomes are built
at once); larger ones get their own and build outcomes on access."""

STATUS = {
    L.S_RATED: "rated",
    L.S_BASELINE: "baseline",
    L.S_DEFERRED: "deferred",
    L.S_NO_TARIFF: "no_tariff",
    L.S_NO_ENERGY: "no_energy",
    L.S_NOT_CHARGED: "not_charged",
    L.S_UNBILLED: "unbilled",
    L.S_ERROR: "error",
}
"""Status code -> name (``Outcome.status``)."""
FALLBACK = {
    L.FALLBACK_VERSION: "version_change",
    L.FALLBACK_YEAR_END: "year_end",
    L.FALLBACK_RANGE: "range",
    L.FALLBACK_TIMELINE: "timeline",
    L.FALLBACK_THRESHOLDS: "thresholds",
    L.FALLBACK_UNSUPPORTED: "unsupported",
}
_TYPES: dict[str, int] = {
    "prepaid": L.ACCOUNT_PREPAID,
    "postpaid": L.ACCOUNT_POSTPAID,
    "unbilled": L.ACCOUNT_UNBILLED,
}
_KINDS: dict[int, AccountType] = {
    L.ACCOUNT_PREPAID: "prepaid",
    L.ACCOUNT_POSTPAID: "postpaid",
    L.ACCOUNT_UNBILLED: "unbilled",
}
_REGISTERS = (Quantity.ENERGY_T1, Quantity.ENERGY_T2, Quantity.ENERGY_T3, Quantity.ENERGY_T4)
_ACCOUNT_ROWS = (
    "a_year",
    "a_thr_set",
    "a_nthr",
    "a_year_end",
    "a_balance",
    "a_alarm1",
    "a_alarm2",
    "a_overdraft",
    "a_close",
    "a_type",
    "a_trip",
    "a_tripped",
    "a_state",
    "a_thr_from",
    "a_thr_to",
    "a_thr_tariff",
)
_METER_ROWS = (
    "m_tariff",
    "m_account",
    "m_has_last",
    "m_last_ts",
    "m_last_e",
    "m_rollover",
    "m_reg_tol",
)
_REGISTER_STEP_WH = 10
"""A DL/T 645 tariff register holds whole 10 Wh: registers summing further than this
x ratio x 4 from the total are not used (gateway.charging's rule)."""
_MIN = -(2**63)
_NO_REGISTERS = [-1] * L.NREG
_STATES = [PrepaidState(s) for s in L.STATES]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one reading did."""

    meter: str
    account: str | None
    ts_ms: int
    status: str  #: a value of :data:`STATUS`
    amount: int  #: charged in total (0.0001 yuan); 0 unless rated
    balance: int  #: the account's balance after the reading
    year_wh: int  #: the account's billing-year energy after the reading
    year_end: datetime | None  #: the account's next yearly tier reset (UTC), if known
    lines: tuple[ChargeLine, ...]  #: as gateway.billing.rate gives them
    #: the rounding accumulators the lines changed, as they are after the reading
    totals: Mapping[SegmentKey, Running] = field(hash=False)
    change: StateChange | None  #: the account's prepaid state changed
    fallback: str | None = None  #: rated by gateway.billing.rate, and why (FALLBACK)
    error: str | None = None  #: rating raised: nothing changed (status ``error``)


class BatchResult(Sequence[Outcome]):
    """The outcomes of one batch: built on access from the kernel's arrays, or, for a
    small batch (up to ``SMALL`` readings), at once (its arrays are then reused)."""

    def __init__(
        self,
        rater: BatchRater,
        meters: list[int],
        ts: list[int],
        out: L.Out,
        python: dict[int, Outcome],
    ) -> None:
        self._rater = rater
        self._meters = meters
        self._ts = ts
        self.out: L.Out | None = out  #: the kernel's arrays (None once built at once)
        self._python = python  #: outcomes of readings rated in Python
        self._cache: dict[int, Outcome] = {}
        self._columns: Mapping[str, Sequence[int]] | None = None
        self._times: dict[int, datetime] = {}

    def columns(self) -> Mapping[str, Sequence[int]]:
        """The kernel's arrays as lists (indexing a list is cheaper), made once."""
        if self._columns is None:
            assert self.out is not None
            self._columns = {name: arr.tolist() for name, arr in vars(self.out).items()}
        return self._columns

    def _build_all(self) -> None:
        """Every outcome now, straight from the arrays; then let go of them."""
        assert self.out is not None
        self._columns = vars(self.out)
        for i in range(len(self._meters)):
            self._cache[i] = self._rater._outcome(self, i)
        self.out = None
        self._columns = None

    def when(self, us: int) -> datetime:
        """``from_us``, remembered (a line's end is often the next line's start)."""
        got = self._times.get(us)
        if got is None:
            got = self._times[us] = from_us(us)
        return got

    def __len__(self) -> int:
        return len(self._meters)

    @overload
    def __getitem__(self, i: int) -> Outcome: ...
    @overload
    def __getitem__(self, i: slice) -> list[Outcome]: ...
    def __getitem__(self, i: int | slice) -> Outcome | list[Outcome]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self._meters):
            raise IndexError(i)
        got = self._cache.get(i)
        if got is None:
            got = self._cache[i] = self._rater._outcome(self, i)
        return got

    def __iter__(self) -> Iterator[Outcome]:
        for i in range(len(self)):
            yield self[i]

    @property
    def changes(self) -> list[StateChange]:
        """The prepaid state changes, in reading order."""
        out = self.out
        if out is None:
            return [c for o in self if (c := o.change) is not None]
        found = [i for i in range(len(self)) if out.old_state[i] != out.new_state[i]]
        return [c for i in found if (c := self[i].change) is not None]

    @property
    def amount(self) -> int:
        """Charged in total by the batch."""
        out = self.out
        if out is None:
            return sum(o.amount for o in self)
        return sum(out.amount[i] for i in range(len(self)))


class BatchRater:
    """Meters' and accounts' rating state in typed arrays; :meth:`rate` takes batches."""

    def __init__(
        self,
        book: TariffBook,
        *,
        engine: ModuleType | None = None,
        max_gap: timedelta | None = None,
        calendar: BillingYear | None = None,
    ) -> None:
        self.book = book
        self.calendar = calendar
        self.engine = engine or fastpath.engine
        self.max_gap = max_gap
        self._max_gap_us = None if max_gap is None else max_gap // timedelta(microseconds=1)
        self.tables = TableBuilder(book)
        self.state = L.State()
        self.meters: list[str] = []
        self.meter_index: dict[str, int] = {}
        self.accounts: list[str] = []
        self.account_index: dict[str, int] = {}
        self._thresholds: list[Thresholds] = []
        self._prorated: list[tuple[int, ...] | None] = []  # the full tuples
        self._opened: list[date | None] = []
        self._extra: dict[int, dict[SegmentKey, Running]] = {}  # keys outside the tables
        self._spare = L.Out(SMALL, 4 * SMALL + L.MAX_PARTS)
        self._one = L.Batch(1)  # rate_one's arrays, reused
        self.fallbacks: Counter[str] = Counter()  #: readings rated in Python, by reason
        self.rated = 0  #: readings the kernel did

    # --- accounts and meters -----------------------------------------------------------

    def add_account(
        self,
        account: str,
        *,
        account_type: AccountType,
        thresholds: Thresholds,
        trip_on_arrears: bool,
        balance: int = 0,
        tripped: bool = False,
        year_wh: int = 0,
        prorated: tuple[int, ...] | None = None,
        year_end_us: int | None = None,
        opened: date | None = None,
        state: PrepaidState | None = None,
    ) -> None:
        """Add (or replace) an account's state.

        With a ``calendar`` (gateway.charging's rules): ``year_end_us`` is the tier
        total's next reset (None: worked out at the account's next reading) and the
        prorated thresholds follow from ``opened`` (``prorated`` is not used).  Without:
        ``prorated`` are its tier thresholds when not the tariff's and ``year_end_us``
        when its total resets (None: never).  ``state``: as recorded (None: evaluated).
        """
        a = self.account_index.get(account)
        st = self.state
        if a is None:
            a = len(self.accounts)
            self.accounts.append(account)
            self.account_index[account] = a
            self._thresholds.append(thresholds)
            self._prorated.append(None)
            self._opened.append(None)
            for name in _ACCOUNT_ROWS:
                getattr(st, name).append(0)
            st.a_thr.extend(L.zeros(L.MAX_TIERS))
        st.a_type[a] = _TYPES[account_type]
        st.a_trip[a] = int(trip_on_arrears)
        st.a_year[a] = year_wh
        self._opened[a] = opened
        if year_end_us is not None:
            st.a_year_end[a] = year_end_us
        else:
            st.a_year_end[a] = L.UNKNOWN if self.calendar is not None else L.NONE
        if self.calendar is not None:  # worked out at the first tiered interval
            self._set_prorated(a, None)
            st.a_thr_from[a], st.a_thr_to[a], st.a_thr_tariff[a] = 0, 0, -1
        else:
            self._set_prorated(a, prorated)
            st.a_thr_from[a], st.a_thr_to[a], st.a_thr_tariff[a] = _MIN, L.NONE, -1
        st.a_balance[a] = balance
        st.a_tripped[a] = int(tripped)
        self._set_levels(a, thresholds)
        st.a_state[a] = self._evaluate(a, balance) if state is None else L.STATES.index(state)

    def _set_prorated(self, a: int, prorated: tuple[int, ...] | None) -> None:
        st = self.state
        self._prorated[a] = prorated
        st.a_thr_set[a] = int(prorated is not None)
        st.a_nthr[a] = 0
        if prorated is None:
            return
        fits = len(prorated) <= L.MAX_TIERS and list(prorated) == sorted(prorated)
        st.a_nthr[a] = len(prorated) if fits else L.MAX_TIERS + 1  # else: Python
        for k, value in enumerate(prorated[: L.MAX_TIERS]):
            st.a_thr[a * L.MAX_TIERS + k] = value

    def _set_levels(self, a: int, thresholds: Thresholds) -> None:
        st = self.state
        self._thresholds[a] = thresholds
        st.a_alarm1[a] = thresholds.alarm1
        st.a_alarm2[a] = thresholds.alarm2
        st.a_overdraft[a] = thresholds.overdraft_limit
        st.a_close[a] = thresholds.close_allow

    def add_meter(
        self,
        meter: str,
        account: str,
        tariff: str | None,
        *,
        rollover_wh: int = 0,
        ratio: int = 1,
        last: tuple[int, int] | None = None,
        registers: Sequence[int | None] = (),
        totals: Mapping[SegmentKey, Running] | None = None,
    ) -> None:
        """Add (or replace) a meter of ``account`` (added before).  ``tariff`` None:
        not charged; ``rollover_wh``: register range x ratio (DL/T 645), 0: none;
        ``ratio``: its CT x PT ratio; ``last``: (ts ms, energy Wh) of its baseline
        reading; ``registers``: that reading's per-tariff registers T1..T4 (all four,
        else none are kept); ``totals``: its rounding accumulators."""
        a = self.account_index[account]
        t = -1 if tariff is None else self._tariff(tariff)
        st = self.state
        m = self.meter_index.get(meter)
        if m is None:
            m = len(self.meters)
            self.meters.append(meter)
            self.meter_index[meter] = m
            for name in _METER_ROWS:
                getattr(st, name).append(0)
            st.m_reg.extend(L.zeros(L.NREG))
            st.m_cum.extend(L.zeros(self.tables.tables.nseg))
            st.m_posted.extend(L.zeros(self.tables.tables.nseg))
        st.m_tariff[m] = t
        st.m_account[m] = a
        st.m_rollover[m] = rollover_wh
        st.m_reg_tol[m] = _REGISTER_STEP_WH * ratio * L.NREG
        complete = len(registers) >= L.NREG and all(r is not None for r in registers[: L.NREG])
        st.m_has_last[m] = int(last is not None)
        st.m_last_ts[m], st.m_last_e[m] = last if last is not None else (0, 0)
        for j in range(L.NREG):
            value = registers[j] if complete else None
            st.m_reg[m * L.NREG + j] = -1 if value is None else value
        self._set_totals(m, totals or {})

    def _tariff(self, tariff: str) -> int:
        """The tariff's index; a new one adds segments: the meters' rows are laid out anew."""
        builder = self.tables
        if tariff in builder.tariff_index:
            return builder.tariff_index[tariff]
        keep = [self.totals(meter) for meter in self.meters]
        t = builder.add(tariff)
        nseg = builder.tables.nseg
        self.state.m_cum = L.zeros(len(self.meters) * nseg)
        self.state.m_posted = L.zeros(len(self.meters) * nseg)
        self._extra.clear()
        for m, totals in enumerate(keep):
            self._set_totals(m, totals)
        return t

    def _set_totals(self, m: int, totals: Mapping[SegmentKey, Running]) -> None:
        nseg = self.tables.tables.nseg
        st = self.state
        for g in range(nseg):
            st.m_cum[m * nseg + g] = 0
            st.m_posted[m * nseg + g] = 0
        extra: dict[SegmentKey, Running] = {}
        for key, run in totals.items():
            seg = self.tables.segment_index.get(key)
            if seg is None:
                extra[key] = run
            else:
                st.m_cum[m * nseg + seg] = run.energy_wh
                st.m_posted[m * nseg + seg] = run.posted
        if extra:
            self._extra[m] = extra
        else:
            self._extra.pop(m, None)

    def totals(self, meter: str) -> dict[SegmentKey, Running]:
        """The meter's rounding accumulators (the ones ever used)."""
        m = self.meter_index[meter]
        nseg = self.tables.tables.nseg
        st = self.state
        out = dict(self._extra.get(m, {}))
        for g, key in enumerate(self.tables.segments):
            cum, posted = st.m_cum[m * nseg + g], st.m_posted[m * nseg + g]
            if cum or posted:
                out[key] = Running(cum, posted)
        return out

    def registers(self, meter: str) -> dict[int, int] | None:
        """The per-tariff registers 1-4 of the meter's baseline reading, if it had them."""
        m = self.meter_index[meter]
        regs = self.state.m_reg[m * L.NREG : (m + 1) * L.NREG]
        return None if min(regs) < 0 else {j + 1: r for j, r in enumerate(regs)}

    def year_end(self, account: str) -> datetime | None:
        """When the account's tier total resets next (UTC), if known."""
        end = self.state.a_year_end[self.account_index[account]]
        return None if end in (L.NONE, L.UNKNOWN) else from_us(end)

    def last(self, meter: str) -> tuple[int, int] | None:
        """(ts ms, energy Wh) of the meter's baseline reading, if any."""
        m = self.meter_index[meter]
        st = self.state
        return (st.m_last_ts[m], st.m_last_e[m]) if st.m_has_last[m] else None

    def meter_state(self, meter: str) -> MeterState:
        """The meter's state as gateway.billing.rate takes it."""
        m = self.meter_index[meter]
        st = self.state
        a = st.m_account[m]
        t = st.m_tariff[m]
        tariff = self.tables.tariff_ids[t] if t >= 0 else ""
        year_end = st.a_year_end[a]
        return MeterState(
            meter,
            self.accounts[a],
            tariff,
            year_wh=st.a_year[a],
            thresholds=self._prorated_of(a),
            year_end=None if year_end in (L.NONE, L.UNKNOWN) else from_us(year_end),
            totals=self.totals(meter),
        )

    def _prorated_of(self, a: int) -> tuple[int, ...] | None:
        return self._prorated[a] if self.state.a_thr_set[a] else None

    # --- balances and states -----------------------------------------------------------

    def balance(self, account: str) -> int:
        return self.state.a_balance[self.account_index[account]]

    def year_wh(self, account: str) -> int:
        return self.state.a_year[self.account_index[account]]

    def prepaid_state(self, account: str) -> PrepaidState:
        return _STATES[self.state.a_state[self.account_index[account]]]

    def tripped(self, account: str) -> bool:
        return bool(self.state.a_tripped[self.account_index[account]])

    def _evaluate(self, a: int, balance: int) -> int:
        st = self.state
        state = evaluate(
            balance,
            self._thresholds[a],
            account_type=_KINDS[st.a_type[a]],
            trip_on_arrears=bool(st.a_trip[a]),
            tripped=bool(st.a_tripped[a]),
        )
        return L.STATES.index(state.value)

    def _settle(self, a: int, balance: int, ts_ms: int) -> StateChange | None:
        st = self.state
        old = st.a_state[a]
        st.a_balance[a] = balance
        new = self._evaluate(a, balance)
        if new == L.ST_DUE_TO_TRIP:
            st.a_tripped[a] = 1
        st.a_state[a] = new
        if new == old:
            return None
        return StateChange(self.accounts[a], ts_ms, _STATES[old], _STATES[new], balance)

    def set_balance(self, account: str, balance: int, ts_ms: int) -> StateChange | None:
        """A top-up (or any balance change outside rating) set the balance."""
        return self._settle(self.account_index[account], balance, ts_ms)

    def relay_closed(self, account: str, ts_ms: int) -> StateChange | None:
        """The account's relays are closed: no longer held tripped; re-evaluated."""
        a = self.account_index[account]
        self.state.a_tripped[a] = 0
        return self._settle(a, self.state.a_balance[a], ts_ms)

    def set_thresholds(
        self, account: str, thresholds: Thresholds, ts_ms: int
    ) -> StateChange | None:
        a = self.account_index[account]
        self._set_levels(a, thresholds)
        return self._settle(a, self.state.a_balance[a], ts_ms)

    # --- rating ------------------------------------------------------------------------

    def rate(self, readings: Sequence[Reading]) -> BatchResult:
        """Rate ``readings`` (1..N, any meters, in order); the outcome of each."""
        index = self.meter_index
        batch = L.Batch.__new__(L.Batch)  # every array set below
        batch.n = len(readings)
        batch.r_meter = array("q", [index[r.meter] for r in readings])
        batch.r_ts = array("q", [r.ts_ms for r in readings])
        batch.r_flags = array("q", [r.flags for r in readings])
        energies: list[int] = []
        registers: list[int] = []
        energy_q, first_q = Quantity.ENERGY_IMPORT, _REGISTERS[0]
        for reading in readings:
            values = reading.values
            energy = values.get(energy_q)
            energies.append(-1 if energy is None or energy < 0 else energy)
            if first_q in values:
                regs = [values.get(q, -1) for q in _REGISTERS]
                if min(regs) >= 0:
                    registers += regs
                    continue
            registers += _NO_REGISTERS
        batch.r_energy = array("q", energies)
        batch.r_reg = array("q", registers)
        return self.rate_arrays(batch)

    def rate_one(self, reading: Reading) -> Outcome:
        """Rate one reading (a batch of one in arrays kept for it): its outcome."""
        batch = self._one
        batch.r_meter[0] = self.meter_index[reading.meter]
        batch.r_ts[0] = reading.ts_ms
        batch.r_flags[0] = reading.flags
        values = reading.values
        energy = values.get(Quantity.ENERGY_IMPORT)
        batch.r_energy[0] = -1 if energy is None or energy < 0 else energy
        regs = _NO_REGISTERS
        if _REGISTERS[0] in values:
            regs = [values.get(q, -1) for q in _REGISTERS]
            if min(regs) < 0:
                regs = _NO_REGISTERS
        batch.r_reg[:] = array("q", regs)
        return self.rate_arrays(batch)[0]

    def rate_arrays(self, batch: L.Batch) -> BatchResult:
        """Rate a batch given as arrays (meter indexes of :attr:`meter_index`)."""
        n = batch.n
        st = self.state
        if n and not 0 <= min(batch.r_meter[:n]) <= max(batch.r_meter[:n]) < len(self.meters):
            raise ValueError("rate_arrays: a meter index out of range")
        # the span of the batch's intervals (an untrusted time is not one of their ends)
        last_ts, has_last, flags, r_ts = st.m_last_ts, st.m_has_last, batch.r_flags, batch.r_ts
        times = [last_ts[m] for m in set(batch.r_meter[:n]) if has_last[m]]
        times += [r_ts[i] for i in range(n) if not flags[i] & L.FLAG_TIME_UNTRUSTED]
        if times:
            self.tables.cover(min(times) * 1000, max(times) * 1000)
        small = n <= SMALL
        if small:  # the same arrays every time: the outcomes are built before returning
            out = self._spare
            out.used[0] = 0
        else:
            out = L.Out(n, 4 * n + L.MAX_PARTS)
        python: dict[int, Outcome] = {}
        kernel = self.engine.rate_batch
        i = 0
        while i < n:
            stop = kernel(self.tables.tables, st, batch, out, i)
            self.rated += stop - i
            if stop >= n:
                break
            reason = out.status[stop]
            if reason == L.NEED_ROOM:
                out = _grown(out)
                i = stop
                continue
            python[stop] = self._in_python(batch, out, stop, FALLBACK[reason])
            i = stop + 1
        result = BatchResult(self, batch.r_meter[:n].tolist(), batch.r_ts[:n].tolist(), out, python)
        if small:
            self._spare = out  # grown, perhaps
            result._build_all()
        return result

    def _in_python(self, batch: L.Batch, out: L.Out, i: int, why: str) -> Outcome:
        """Rate reading ``i`` (the kernel stopped at it) with gateway.billing.rate."""
        self.fallbacks[why] += 1
        st = self.state
        m = batch.r_meter[i]
        a = st.m_account[m]
        t = st.m_tariff[m]
        ts, energy, flags = batch.r_ts[i], batch.r_energy[i], batch.r_flags[i]
        span = st.m_rollover[m] if flags & L.FLAG_ROLLOVER and st.m_rollover[m] > 0 else 0
        delta = energy - st.m_last_e[m]
        if delta < 0:
            delta += span
        untrusted = flags & L.FLAG_TIME_UNTRUSTED
        t0_us = st.m_last_ts[m] * 1000
        t0, t1 = from_us(t0_us), from_us(t0_us if untrusted else max(t0_us, ts * 1000))
        kept = st.m_last_ts[m] if untrusted else ts  # an untrusted time is not kept
        slot_wh = self._slot_deltas(batch, i, m, delta, span)
        calendar = self.calendar
        year_end = st.a_year_end[a]
        if calendar is not None:
            if year_end == L.UNKNOWN:
                year_end = to_us(calendar.end_of(t0))
            self._thresholds_at(a, t, t0)
        before = replace(
            self.meter_state(self.meters[m]),
            year_end=None if year_end == L.NONE else from_us(year_end),
        )
        year = st.a_year[a]
        out.balance[i] = st.a_balance[a]
        out.line0[i], out.nline[i], out.amount[i] = 0, 0, 0
        out.old_state[i] = out.new_state[i] = st.a_state[a]
        out.year[i], out.year_end[i] = year, st.a_year_end[a]
        change = None
        try:
            rating = rate(
                before, Interval(t0, t1, delta, slot_wh), self.book, max_gap=self.max_gap,
                engine=self.engine,
            )  # fmt: skip
        except KeyError:  # no tariff version in force
            self._baseline(batch, i, m, kept)
            out.status[i] = L.S_NO_TARIFF
            return self._python_outcome(m, a, out, i, (), {}, None, why)
        except (ValueError, IndexError) as exc:  # refused by rate; or prorated tiers too long
            out.status[i] = L.S_ERROR
            return self._python_outcome(m, a, out, i, (), {}, None, why, str(exc))
        after = rating.state
        self._set_totals(m, after.totals)
        st.a_year[a] = after.year_wh
        if after.year_end is not None:
            st.a_year_end[a] = to_us(after.year_end)
        elif calendar is not None:
            st.a_year_end[a] = to_us(calendar.end_of(t1))
        else:
            st.a_year_end[a] = L.NONE
        if calendar is None and after.thresholds is None:
            self._set_prorated(a, None)
        self._baseline(batch, i, m, kept)
        out.year[i], out.year_end[i] = st.a_year[a], st.a_year_end[a]
        touched = {(ln.tariff_id, ln.version, ln.key) for ln in rating.lines}
        totals = {k: after.totals[k] for k in touched}
        out.regs[i] = int(slot_wh is not None and all(not ln.apportioned for ln in rating.lines))
        if st.a_type[a] == L.ACCOUNT_UNBILLED:
            out.status[i] = L.S_UNBILLED
            return self._python_outcome(m, a, out, i, rating.lines, totals, None, why)
        out.amount[i] = rating.amount
        change = self._settle(a, st.a_balance[a] - rating.amount, ts)
        out.status[i] = L.S_RATED
        out.balance[i], out.new_state[i] = st.a_balance[a], st.a_state[a]
        return self._python_outcome(m, a, out, i, rating.lines, totals, change, why)

    def _slot_deltas(
        self, batch: L.Batch, i: int, m: int, delta: int, span: int
    ) -> dict[int, int] | None:
        """Per-tariff register deltas (gateway.charging's rule): all four in both
        readings, a rollover added, none falling, their sum within the registers'
        resolution of the total; else None."""
        st = self.state
        out: dict[int, int] = {}
        for j in range(L.NREG):
            cur, prev = batch.r_reg[i * L.NREG + j], st.m_reg[m * L.NREG + j]
            if cur < 0 or prev < 0:
                return None
            d = cur - prev
            if d < 0:
                d += span
            if d < 0:
                return None
            out[j + 1] = d
        if abs(sum(out.values()) - delta) > st.m_reg_tol[m]:
            return None
        return out

    def _thresholds_at(self, a: int, t: int, t0: datetime) -> None:
        """The account's prorated thresholds for an interval starting at ``t0`` (the
        calendar's rule), and the stretch they hold for (its billing year and version)."""
        assert self.calendar is not None
        st = self.state
        tariff = self.tables.tariff_ids[t]
        self._set_prorated(a, self.calendar.thresholds(self.book, tariff, self._opened[a], t0))
        begin, end = self.calendar.bounds(t0)
        window = self.tables.version_window(t, to_us(t0))
        if window is None:
            st.a_thr_from[a], st.a_thr_to[a], st.a_thr_tariff[a] = 0, 0, -1
            return
        st.a_thr_from[a] = max(to_us(begin), window[0])
        st.a_thr_to[a] = min(to_us(end), window[1])
        st.a_thr_tariff[a] = t

    def _baseline(self, batch: L.Batch, i: int, m: int, ts: int) -> None:
        st = self.state
        st.m_has_last[m] = 1
        st.m_last_ts[m] = ts
        st.m_last_e[m] = batch.r_energy[i]
        for j in range(L.NREG):
            st.m_reg[m * L.NREG + j] = batch.r_reg[i * L.NREG + j]

    def _python_outcome(
        self,
        m: int,
        a: int,
        out: L.Out,
        i: int,
        lines: tuple[ChargeLine, ...],
        totals: Mapping[SegmentKey, Running],
        change: StateChange | None,
        why: str,
        error: str | None = None,
    ) -> Outcome:
        year_end = out.year_end[i]
        return Outcome(
            self.meters[m],
            self.accounts[a],
            0,  # set by the result
            "",
            out.amount[i],
            out.balance[i],
            out.year[i],
            None if year_end in (L.NONE, L.UNKNOWN) else from_us(year_end),
            lines,
            totals,
            change,
            why,
            error,
        )

    def _outcome(self, result: BatchResult, i: int) -> Outcome:
        """The outcome of reading ``i`` from the kernel's arrays (as lists)."""
        col = result.columns()
        m = result._meters[i]
        ts = result._ts[i]
        st = self.state
        code = col["status"][i]
        python = result._python.get(i)
        if python is not None:
            return _fill(python, ts, STATUS[code])
        account = self.accounts[st.m_account[m]] if code != L.S_NOT_CHARGED else None
        lines: list[ChargeLine] = []
        totals: dict[SegmentKey, Running] = {}
        regs = bool(col["regs"][i])
        segments = self.tables.segments
        gap = self._max_gap_us
        estimated = gap is not None and not regs and col["span"][i] > gap
        meter = self.meters[m]
        when = result.when
        l_seg, l_t0, l_t1 = col["l_seg"], col["l_t0"], col["l_t1"]
        l_energy, l_price, l_amount = col["l_energy"], col["l_price"], col["l_amount"]
        l_cum, l_posted = col["l_cum"], col["l_posted"]
        first = col["line0"][i]
        for k in range(first, first + col["nline"][i]):
            key = segments[l_seg[k]]
            lines.append(
                ChargeLine(
                    meter,
                    account or "",
                    key[0],
                    key[1],
                    key[2],
                    when(l_t0[k]),
                    when(l_t1[k]),
                    l_energy[k],
                    l_price[k],
                    l_amount[k],
                    estimated,
                    not regs,
                )
            )
            totals[key] = Running(l_cum[k], l_posted[k])
        change = None
        old, new, balance = col["old_state"][i], col["new_state"][i], col["balance"][i]
        if old != new and account is not None:
            change = StateChange(account, ts, _STATES[old], _STATES[new], balance)
        year_end = col["year_end"][i]
        return Outcome(
            meter,
            account,
            ts,
            STATUS[code],
            col["amount"][i],
            balance,
            col["year"][i],
            None if year_end in (L.NONE, L.UNKNOWN) else when(year_end),
            tuple(lines),
            totals,
            change,
        )


def _fill(outcome: Outcome, ts: int, status: str) -> Outcome:
    return replace(outcome, ts_ms=ts, status=status)


def _grown(out: L.Out) -> L.Out:
    """The same results with twice the room for lines."""
    n = len(out.status)
    bigger = L.Out(0, 2 * len(out.l_seg))
    for name in vars(out):
        if not name.startswith("l_"):
            setattr(bigger, name, getattr(out, name))
    for name in vars(out):
        if name.startswith("l_"):
            getattr(bigger, name)[: len(out.l_seg)] = getattr(out, name)
    assert len(bigger.status) == n
    return bigger


class Rating:
    """The Charger's rating state and per-reading rating (see the module docstring): one
    :class:`BatchRater`, filled at (re)load, rating each reading as
    :func:`~gateway.charging.rate.rate_reading` would.  The caller holds the Charger's lock."""

    def __init__(
        self, book: TariffBook, calendar: BillingYear, *, engine: ModuleType | None = None
    ) -> None:
        self.rater = BatchRater(book, engine=engine, calendar=calendar)
        self._billing: dict[str, Billing] = {}  # what each meter's row was added for

    def add_account(
        self,
        account: str,
        account_type: AccountType,
        *,
        trip_on_arrears: bool,
        thresholds: Thresholds,
        year: AccountYear,
        opened: date | None,
    ) -> None:
        """Add an account's tier state (``year``, as stored) and opening day."""
        self.rater.add_account(
            account,
            account_type=account_type,
            thresholds=thresholds,  # the rater's prepaid state is not used
            trip_on_arrears=trip_on_arrears,
            year_wh=year.year_wh,
            year_end_us=None if year.year_end is None else to_us(year.year_end),
            opened=opened,
            state=PrepaidState.NORMAL,
        )

    def add_meter(self, billing: Billing, row: RatingRow | None) -> None:
        """Add a billed meter with its stored rating state (None: no baseline yet)."""
        slots = row.slots if row is not None else None
        self.rater.add_meter(
            billing.meter,
            billing.account,
            billing.tariff,
            rollover_wh=REGISTER_RANGE_WH * billing.ratio if billing.dlt645 else 0,
            ratio=billing.ratio,
            last=None if row is None else (row.last_ts_ms, row.last_energy_wh),
            registers=() if slots is None else [slots.get(j) for j in range(1, L.NREG + 1)],
            totals=None if row is None else row.totals,
        )
        self._billing[billing.meter] = billing

    def row(self, meter: str) -> RatingRow | None:
        """The meter's rating state as ``rate_reading`` keeps it (None: no baseline)."""
        rater = self.rater
        if meter not in rater.meter_index:
            return None
        last = rater.last(meter)
        if last is None:
            return None
        return RatingRow(meter, last[0], last[1], rater.totals(meter), rater.registers(meter))

    def year(self, account: str) -> AccountYear:
        """The account's billing-year tier state."""
        if account not in self.rater.account_index:
            return AccountYear()
        return AccountYear(self.rater.year_wh(account), self.rater.year_end(account))

    def forget(self, meter: str) -> None:
        """The meter's baseline and accumulators are dropped (it left billing)."""
        billing = self._billing.get(meter)
        if billing is not None:
            self.add_meter(billing, None)

    def rate(self, reading: Reading, billing: Billing) -> tuple[Rated, AccountYear]:
        """Rate ``reading`` (a batch of one): what ``rate_reading`` gives for the state
        held, and the account's tier state before it (to tell a closed year)."""
        if self._billing.get(billing.meter) != billing:  # not loaded as billed so
            self.add_meter(billing, self.row(billing.meter))
        before = self.year(billing.account)
        o = self.rater.rate_one(reading)
        status = o.status
        if status in ("rated", "unbilled"):
            return Rated(
                "rated",
                self.row(billing.meter),
                AccountYear(o.year_wh, o.year_end),
                o.lines,
                o.amount,
            ), before
        if status in ("baseline", "no_tariff"):
            if status == "no_tariff":  # stored, not charged (as rate_reading logs it)
                _logger.warning(
                    "meter %s: not rated: no version of %s in force", billing.meter, billing.tariff
                )
            return Rated("baseline", self.row(billing.meter)), before
        if status in ("deferred", "no_energy"):
            return Rated(status), before
        raise RatingError(f"{billing.meter} at {reading.ts_ms}: {status} {o.error or ''}".strip())
