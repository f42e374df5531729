"""The fast path's driver: :class:`BatchRater` turns batches of readings into arrays, runs
the kernel over :class:`~gateway.charging.fast.arrays.RatingArrays` and rates in Python
(``gateway.billing.rate``) what the kernel hands back (see :mod:`gateway.charging.fast`)."""

from __future__ import annotations

from array import array
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from gateway.billing import ChargeLine, Interval, Running, rate
from gateway.charging.fast.arrays import PREPAID_STATES, RatingArrays
from gateway.charging.fast.outcome import FALLBACK, SMALL, STATUS, BatchResult, Outcome
from gateway.fastpath import layout as L
from gateway.fastpath.tables import SegmentKey, from_us, to_us
from gateway.prepaid import StateChange
from gateway.protocols.quantities import Quantity, Reading

__all__ = ["BatchRater"]

_REGISTERS = (Quantity.ENERGY_T1, Quantity.ENERGY_T2, Quantity.ENERGY_T3, Quantity.ENERGY_T4)
_NO_REGISTERS = [-1] * L.NREG


class BatchRater(RatingArrays):
    """Meters' and accounts' rating state in typed arrays (:class:`RatingArrays`);
    :meth:`rate` takes batches."""

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
            change = StateChange(account, ts, PREPAID_STATES[old], PREPAID_STATES[new], balance)
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
