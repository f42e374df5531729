"""The fast path's rating state: every charged meter's and account's rows in the typed
arrays of ``gateway/fastpath/layout.py`` (:class:`RatingArrays`): adding accounts and meters,
reading their state back, and the balance and prepaid-state moves (see
:mod:`gateway.charging.fast`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from types import ModuleType

from gateway import fastpath
from gateway.billing import BillingYear, MeterState, Running, TariffBook
from gateway.charging.fast.outcome import SMALL
from gateway.config.model import AccountType
from gateway.fastpath import layout as L
from gateway.fastpath.tables import SegmentKey, TableBuilder, from_us
from gateway.prepaid import PrepaidState, StateChange, Thresholds, evaluate

__all__ = ["PREPAID_STATES", "RatingArrays"]

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
PREPAID_STATES = [PrepaidState(s) for s in L.STATES]


class RatingArrays:
    """Meters' and accounts' rating state in typed arrays: filled, read and moved here;
    :class:`~gateway.charging.fast.rater.BatchRater` rates batches on it."""

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
        return PREPAID_STATES[self.state.a_state[self.account_index[account]]]

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
        return StateChange(
            self.accounts[a], ts_ms, PREPAID_STATES[old], PREPAID_STATES[new], balance
        )

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
