"""Pure-Python twin of the compiled fast path (``_engine.pyx``).

Both must give identical results to the unit; every fast-path test runs against both.

The rounding rule (design.md, "Money and energy"): for each meter and tariff segment
the charge posted is round(cumulative energy x price) minus what was already posted,
so many small intervals cost exactly what their sum costs.  Energy is in Wh, prices
in 0.0001 yuan per kWh, money in 0.0001 yuan; rounding is half up.
"""

from __future__ import annotations

from array import array

from gateway.fastpath import layout as _layout
from gateway.fastpath.layout import (
    ACCOUNT_PREPAID,
    ACCOUNT_UNBILLED,
    FALLBACK_RANGE,
    FALLBACK_THRESHOLDS,
    FALLBACK_TIMELINE,
    FALLBACK_UNSUPPORTED,
    FALLBACK_VERSION,
    FALLBACK_YEAR_END,
    FLAG_DISCONTINUITY,
    FLAG_ROLLOVER,
    FLAG_TIME_UNTRUSTED,
    KIND_FLAT,
    KIND_PYTHON,
    KIND_TIERED,
    KIND_TOU,
    MAX_PARTS,
    MAX_TIERS,
    NEED_ROOM,
    NONE,
    NREG,
    S_BASELINE,
    S_DEFERRED,
    S_NO_ENERGY,
    S_NO_TARIFF,
    S_NOT_CHARGED,
    S_RATED,
    S_UNBILLED,
    ST_ALARM1,
    ST_ALARM2,
    ST_DUE_TO_TRIP,
    ST_MAY_CLOSE,
    ST_NORMAL,
    Batch,
    Out,
    State,
    Tables,
)

__all__ = [
    "ENERGY_MAX_WH",
    "LAYOUT",
    "PRICE_MAX",
    "charge_batch",
    "cumulative_cost",
    "evaluate_state",
    "posted_charge",
    "rate_batch",
]

ENERGY_MAX_WH = 10**12
"""Largest cumulative energy accepted (1e9 kWh), so products stay inside int64."""
PRICE_MAX = 10**6
"""Largest price accepted: 100 yuan per kWh, in 0.0001 yuan."""


def cumulative_cost(cum_wh: int, price: int) -> int:
    """round_half_up(cum_wh / 1000 kWh x price), in 0.0001 yuan."""
    if not 0 <= cum_wh <= ENERGY_MAX_WH:
        raise ValueError(f"cumulative energy out of range: {cum_wh}")
    if not 0 <= price <= PRICE_MAX:
        raise ValueError(f"price out of range: {price}")
    return (cum_wh * price + 500) // 1000


def posted_charge(cum_wh: int, price: int, posted: int) -> int:
    """The charge to post now: cost of the cumulative energy minus what is posted."""
    return cumulative_cost(cum_wh, price) - posted


def charge_batch(cum_wh: array[int], price: array[int], posted: array[int]) -> array[int]:
    """Vector form: ``posted`` is updated in place; the charges are returned."""
    n = len(cum_wh)
    if len(price) != n or len(posted) != n:
        raise ValueError("charge_batch: arrays differ in length")
    out = array("q", bytes(8 * n))
    for i in range(n):
        total = cumulative_cost(cum_wh[i], price[i])
        out[i] = total - posted[i]
        posted[i] = total
    return out


# --- the rating kernel -----------------------------------------------------------------
# Line for line the twin of ``rate_batch`` in _engine.pyx; the layout is in layout.py and
# the rules are those of gateway.billing.rating (rate: _pieces, _apportion,
# _by_registers, _tier_split, _merge) and gateway.prepaid.evaluate.

LAYOUT: dict[str, int] = {
    name: getattr(_layout, name)
    for name in _layout.__all__
    if name.isupper() and name not in ("NONE", "UNKNOWN", "STATES", "S_ERROR")
}
"""The layout constants this build uses (the compiled one lists its own)."""

_LIMIT = 2**61
"""energy x duration (us) must stay below this (the apportioning's products)."""


def _evaluate(st: State, a: int, balance: int) -> int:
    """gateway.prepaid.evaluate on the account's levels: a state code."""
    kind = st.a_type[a]
    if kind == ACCOUNT_UNBILLED:
        return ST_NORMAL
    trips = kind == ACCOUNT_PREPAID and st.a_trip[a] != 0
    overdraft = st.a_overdraft[a]
    if trips and st.a_tripped[a] != 0:
        if balance > st.a_close[a] and balance + overdraft > 0:
            return ST_MAY_CLOSE
        return ST_DUE_TO_TRIP
    if trips and balance + overdraft <= 0:
        return ST_DUE_TO_TRIP
    if balance <= st.a_alarm2[a]:
        return ST_ALARM2
    if balance <= st.a_alarm1[a]:
        return ST_ALARM1
    return ST_NORMAL


def evaluate_state(st: State, a: int, balance: int) -> int:
    """The state code of account ``a`` at ``balance`` (not stored)."""
    return _evaluate(st, a, balance)


def _baseline(st: State, bt: Batch, i: int, m: int, ts: int) -> None:
    st.m_has_last[m] = 1
    st.m_last_ts[m] = ts
    st.m_last_e[m] = bt.r_energy[i]
    for j in range(NREG):
        st.m_reg[m * NREG + j] = bt.r_reg[i * NREG + j]


def rate_batch(tb: Tables, st: State, bt: Batch, out: Out, start: int) -> int:
    """Rate readings ``start``.. of ``bt`` in order, updating ``st``; fill ``out``.

    Returns the index of the first reading it did not do (``bt.n`` when all are
    done); ``out.status`` of that reading says why (FALLBACK_*, NEED_ROOM).  Nothing
    of that reading has changed: the caller rates it and calls again from the next.
    """
    nseg = tb.nseg
    nl = out.used[0]
    cap = len(out.l_seg)
    n = bt.n
    per_reading = [bt.r_meter, bt.r_ts, bt.r_energy, bt.r_flags, out.status, out.amount]
    per_reading += [out.line0, out.nline, out.balance, out.old_state, out.new_state]
    per_reading += [out.regs, out.year, out.year_end, out.span]
    lines = (out.l_reading, out.l_energy, out.l_price, out.l_amount, out.l_t0, out.l_t1)
    if (
        start < 0
        or any(len(arr) < n for arr in per_reading)
        or len(bt.r_reg) < n * NREG
        or any(len(arr) != cap for arr in (*lines, out.l_cum, out.l_posted))
    ):
        raise ValueError("rate_batch: arrays shorter than the batch")
    p_key = [0] * MAX_PARTS
    p_energy = [0] * MAX_PARTS
    p_t0 = [0] * MAX_PARTS
    p_t1 = [0] * MAX_PARTS
    p_price = [0] * MAX_PARTS
    thr = [0] * MAX_TIERS
    regs = [0] * NREG
    i = start
    while i < bt.n:
        if cap - nl < MAX_PARTS:
            out.status[i] = NEED_ROOM
            out.used[0] = nl
            return i
        m = bt.r_meter[i]
        t = st.m_tariff[m]
        a = st.m_account[m]
        out.line0[i] = nl
        out.nline[i] = 0
        out.amount[i] = 0
        out.regs[i] = 0
        out.span[i] = 0
        if t < 0:
            out.status[i] = S_NOT_CHARGED
            out.balance[i] = 0
            out.year[i] = 0
            out.year_end[i] = NONE
            out.old_state[i] = out.new_state[i] = ST_NORMAL
            i += 1
            continue
        state = st.a_state[a]
        out.old_state[i] = state
        out.new_state[i] = state
        out.balance[i] = st.a_balance[a]
        out.year[i] = st.a_year[a]
        out.year_end[i] = st.a_year_end[a]
        energy = bt.r_energy[i]
        flags = bt.r_flags[i]
        if energy < 0:
            out.status[i] = S_NO_ENERGY
            i += 1
            continue
        if st.m_has_last[m] == 0 or flags & FLAG_DISCONTINUITY:
            _baseline(st, bt, i, m, bt.r_ts[i])
            out.status[i] = S_BASELINE
            i += 1
            continue
        # an untrusted time is not kept: the state keeps the last trusted one, and the
        # energy is rated at it (a zero-length interval)
        untrusted = flags & FLAG_TIME_UNTRUSTED
        ts = st.m_last_ts[m] if untrusted else bt.r_ts[i]
        delta = energy - st.m_last_e[m]
        if delta < 0 and flags & FLAG_ROLLOVER and st.m_rollover[m] > 0:
            delta += st.m_rollover[m]
        if delta < 0:
            _baseline(st, bt, i, m, ts)
            out.status[i] = S_BASELINE
            i += 1
            continue
        t0 = st.m_last_ts[m] * 1000
        t1 = bt.r_ts[i] * 1000
        if t1 < t0 or untrusted:
            t1 = t0
        if untrusted and tb.t_has_tou[t] != 0:
            out.status[i] = S_DEFERRED
            i += 1
            continue
        # the version in force at t0; none: not rated
        first = tb.t_ver_start[t]
        last = first + tb.t_ver_count[t]
        v = -1
        k = first
        while k < last and tb.v_eff[k] <= t0:
            v = k
            k += 1
        if v < 0:
            _baseline(st, bt, i, m, ts)
            out.status[i] = S_NO_TARIFF
            i += 1
            continue
        if v + 1 < last and tb.v_eff[v + 1] < t1:
            out.status[i] = FALLBACK_VERSION
            break
        kind = tb.v_kind[v]
        if kind == KIND_PYTHON:
            out.status[i] = FALLBACK_UNSUPPORTED
            break
        year_end = st.a_year_end[a]
        if year_end != NONE and (t1 > year_end or t0 >= year_end):
            out.status[i] = FALLBACK_YEAR_END
            break
        span = t1 - t0
        # per-tariff registers: deltas of the slots both readings have
        # per-tariff registers (all four in both readings): their deltas, a rollover
        # added; not used if one fell or their sum strays from the total
        use_regs = 0
        reg_sum = 0
        if kind == KIND_TOU:
            use_regs = 1
            for j in range(NREG):
                cur = bt.r_reg[i * NREG + j]
                prev = st.m_reg[m * NREG + j]
                if cur < 0 or prev < 0:
                    use_regs = 0
                    break
                regs[j] = cur - prev
                if regs[j] < 0 and flags & FLAG_ROLLOVER and st.m_rollover[m] > 0:
                    regs[j] += st.m_rollover[m]
                if regs[j] < 0:
                    use_regs = 0
                    break
                reg_sum += regs[j]
            if use_regs and abs(reg_sum - delta) > st.m_reg_tol[m]:
                use_regs = 0
            if not use_regs:
                reg_sum = 0
        big = reg_sum if use_regs and reg_sum > delta else delta
        if big > _LIMIT // (span + 1):
            out.status[i] = FALLBACK_RANGE
            break
        base = tb.v_seg[v]
        poff = tb.v_price_off[v]
        np = 0
        if kind == KIND_FLAT:
            p_key[0] = 0
            p_energy[0] = delta
            p_t0[0] = t0
            p_t1[0] = t1
            p_price[0] = tb.prices[poff]
            np = 1
        elif kind == KIND_TIERED:
            nthr = tb.v_nthr[v]
            owner = st.a_thr_tariff[a]
            if t0 < st.a_thr_from[a] or t0 >= st.a_thr_to[a] or (owner >= 0 and owner != t):
                out.status[i] = FALLBACK_THRESHOLDS
                break
            if st.a_thr_set[a] != 0:
                if st.a_nthr[a] != nthr:
                    out.status[i] = FALLBACK_THRESHOLDS
                    break
                for k in range(nthr):
                    thr[k] = st.a_thr[a * MAX_TIERS + k]
            else:
                toff = tb.v_thr_off[v]
                for k in range(nthr):
                    thr[k] = tb.thresholds[toff + k]
            year = st.a_year[a]
            done = 0
            begin = t0
            while True:
                tier = 0  # bisect_right: thresholds <= year + done
                while tier < nthr and thr[tier] <= year + done:
                    tier += 1
                room = thr[tier] - (year + done) if tier < nthr else delta - done
                take = delta - done
                if room < take:
                    take = room
                done += take
                end = t1 if done == delta else t0 + span * done // delta
                p_key[np] = tier
                p_energy[np] = take
                p_t0[np] = begin
                p_t1[np] = end
                p_price[np] = tb.prices[poff + tier]
                np += 1
                begin = end
                if done == delta:
                    break
        else:  # time of use: the spans of the version's timeline inside [t0, t1]
            off = tb.v_tl_off[v]
            cnt = tb.v_tl_count[v]
            if cnt == 0 or t0 < tb.tl_us[off] or t1 > tb.v_tl_end[v]:
                out.status[i] = FALLBACK_TIMELINE
                break
            lo = off
            hi = off + cnt  # the last span starting at or before t0 (binary search)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if tb.tl_us[mid] <= t0:
                    lo = mid
                else:
                    hi = mid
            k = lo
            begin = t0
            while True:
                if np == MAX_PARTS:
                    break
                p_key[np] = tb.tl_key[k]
                p_t0[np] = begin
                p_price[np] = tb.prices[poff + tb.tl_key[k]]
                if k + 1 < off + cnt and tb.tl_us[k + 1] < t1:
                    begin = tb.tl_us[k + 1]
                    p_t1[np] = begin
                    np += 1
                    k += 1
                else:
                    p_t1[np] = t1
                    np += 1
                    break
            if np == MAX_PARTS and p_t1[np - 1] != t1:
                out.status[i] = FALLBACK_TIMELINE
                break
            if use_regs:
                for k in range(np):
                    p_energy[k] = 0
                for j in range(NREG):
                    if regs[j] < 0:
                        continue
                    key = tb.v_regkey[v * NREG + j]
                    whole = 0
                    for k in range(np):
                        if p_key[k] == key:
                            whole += p_t1[k] - p_t0[k]
                    every = 1
                    for k in range(np):
                        if p_key[k] == key:
                            every = 0
                            break
                    if every:
                        whole = span
                    acc = 0
                    upto_done = 0
                    first_k = 1
                    for k in range(np):
                        if not every and p_key[k] != key:
                            continue
                        if whole == 0:
                            share = regs[j] if first_k else 0
                        else:
                            acc += p_t1[k] - p_t0[k]
                            upto = (2 * regs[j] * acc + whole) // (2 * whole)
                            share = upto - upto_done
                            upto_done = upto
                        first_k = 0
                        p_energy[k] += share
            else:
                upto_done = 0
                for k in range(np):
                    if span == 0:
                        p_energy[k] = delta if k == 0 else 0
                    else:
                        upto = (2 * delta * (p_t1[k] - t0) + span) // (2 * span)
                        p_energy[k] = upto - upto_done
                        upto_done = upto
        # the rounding rule needs cum <= ENERGY_MAX_WH: check before changing anything
        total = 0
        for k in range(np):
            total += p_energy[k]
        row = m * nseg + base
        fits = 1
        for k in range(np):
            if st.m_cum[row + p_key[k]] + total > ENERGY_MAX_WH or p_price[k] > PRICE_MAX:
                fits = 0
        if not fits:
            out.status[i] = FALLBACK_RANGE
            break
        amount = 0
        for k in range(np):
            e = p_energy[k]
            if e == 0:
                continue
            idx = row + p_key[k]
            cum = st.m_cum[idx] + e
            cost = (cum * p_price[k] + 500) // 1000
            charge = cost - st.m_posted[idx]
            st.m_cum[idx] = cum
            st.m_posted[idx] = cost
            out.l_reading[nl] = i
            out.l_seg[nl] = base + p_key[k]
            out.l_energy[nl] = e
            out.l_price[nl] = p_price[k]
            out.l_amount[nl] = charge
            out.l_t0[nl] = p_t0[k]
            out.l_t1[nl] = p_t1[k]
            out.l_cum[nl] = cum
            out.l_posted[nl] = cost
            nl += 1
            amount += charge
        st.a_year[a] += total
        out.year[i] = st.a_year[a]
        out.year_end[i] = st.a_year_end[a]
        _baseline(st, bt, i, m, ts)
        out.nline[i] = nl - out.line0[i]
        out.amount[i] = amount
        out.regs[i] = use_regs
        out.span[i] = span
        if st.a_type[a] == ACCOUNT_UNBILLED:
            out.amount[i] = 0
            out.status[i] = S_UNBILLED
            i += 1
            continue
        balance = st.a_balance[a] - amount
        st.a_balance[a] = balance
        state = _evaluate(st, a, balance)
        if state == ST_DUE_TO_TRIP:
            st.a_tripped[a] = 1
        st.a_state[a] = state
        out.balance[i] = balance
        out.new_state[i] = state
        out.status[i] = S_RATED
        i += 1
    out.used[0] = nl
    return i
