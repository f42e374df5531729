# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled fast path.  Its pure twin is ``_engine_py.py``; both must agree to the unit.

See the twin for the rounding rule.  Arrays are ``array('q')`` (int64).
"""

from array import array

ENERGY_MAX_WH = 10**12
PRICE_MAX = 10**6

cdef long long _ENERGY_MAX = 10**12
cdef long long _PRICE_MAX = 10**6


cdef inline long long _cost(long long cum_wh, long long price) except? -1:
    if cum_wh < 0 or cum_wh > _ENERGY_MAX:
        raise ValueError(f"cumulative energy out of range: {cum_wh}")
    if price < 0 or price > _PRICE_MAX:
        raise ValueError(f"price out of range: {price}")
    return (cum_wh * price + 500) // 1000


def cumulative_cost(cum_wh, price):
    if not (0 <= cum_wh <= ENERGY_MAX_WH):
        raise ValueError(f"cumulative energy out of range: {cum_wh}")
    if not (0 <= price <= PRICE_MAX):
        raise ValueError(f"price out of range: {price}")
    return _cost(cum_wh, price)


def posted_charge(cum_wh, price, posted):
    return cumulative_cost(cum_wh, price) - posted


def charge_batch(cum_wh, price, posted):
    cdef Py_ssize_t n = len(cum_wh)
    if len(price) != n or len(posted) != n:
        raise ValueError("charge_batch: arrays differ in length")
    cdef long long[:] e = cum_wh
    cdef long long[:] p = price
    cdef long long[:] q = posted
    result = array("q", bytes(8 * n))
    cdef long long[:] out = result
    cdef Py_ssize_t i
    cdef long long total
    for i in range(n):
        total = _cost(e[i], p[i])
        out[i] = total - q[i]
        q[i] = total
    return result


# --- the rating kernel -----------------------------------------------------------------
# The twin of ``rate_batch`` in _engine_py.py, line for line (the twin has the comments);
# the layout is in layout.py.  No Python object is touched inside the loop.

cimport cython
from cpython cimport array as carray

from gateway.fastpath.layout import NONE as _NONE_PY

DEF MAX_PARTS = 64
DEF MAX_TIERS = 8
DEF NREG = 4

cdef enum:
    FLAG_TIME_UNTRUSTED = 1
    FLAG_ROLLOVER = 4
    FLAG_DISCONTINUITY = 8
    KIND_FLAT = 0
    KIND_TOU = 1
    KIND_TIERED = 2
    KIND_PYTHON = 3
    ACCOUNT_PREPAID = 0
    ACCOUNT_POSTPAID = 1
    ACCOUNT_UNBILLED = 2
    ST_NORMAL = 0
    ST_ALARM1 = 1
    ST_ALARM2 = 2
    ST_DUE_TO_TRIP = 3
    ST_MAY_CLOSE = 4
    S_RATED = 0
    S_BASELINE = 1
    S_DEFERRED = 2
    S_NO_TARIFF = 3
    S_NO_ENERGY = 4
    S_NOT_CHARGED = 5
    S_UNBILLED = 6
    FALLBACK_VERSION = 10
    FALLBACK_YEAR_END = 11
    FALLBACK_RANGE = 12
    FALLBACK_TIMELINE = 13
    FALLBACK_THRESHOLDS = 14
    FALLBACK_UNSUPPORTED = 15
    NEED_ROOM = 19

cdef long long _NONE = 0x7FFFFFFFFFFFFFFF
cdef long long _LIMIT = 2305843009213693952  # 2**61
assert _NONE == _NONE_PY

LAYOUT = {
    "MAX_PARTS": MAX_PARTS, "MAX_TIERS": MAX_TIERS, "NREG": NREG,
    "S_RATED": S_RATED, "S_BASELINE": S_BASELINE, "S_DEFERRED": S_DEFERRED,
    "S_NO_TARIFF": S_NO_TARIFF, "S_NO_ENERGY": S_NO_ENERGY, "S_NOT_CHARGED": S_NOT_CHARGED,
    "S_UNBILLED": S_UNBILLED, "FALLBACK_VERSION": FALLBACK_VERSION,
    "FALLBACK_YEAR_END": FALLBACK_YEAR_END, "FALLBACK_RANGE": FALLBACK_RANGE,
    "FALLBACK_TIMELINE": FALLBACK_TIMELINE, "FALLBACK_THRESHOLDS": FALLBACK_THRESHOLDS,
    "FALLBACK_UNSUPPORTED": FALLBACK_UNSUPPORTED,
    "NEED_ROOM": NEED_ROOM, "KIND_FLAT": KIND_FLAT, "KIND_TOU": KIND_TOU,
    "KIND_TIERED": KIND_TIERED, "KIND_PYTHON": KIND_PYTHON,
    "ACCOUNT_PREPAID": ACCOUNT_PREPAID, "ACCOUNT_POSTPAID": ACCOUNT_POSTPAID,
    "ACCOUNT_UNBILLED": ACCOUNT_UNBILLED, "ST_NORMAL": ST_NORMAL, "ST_ALARM1": ST_ALARM1,
    "ST_ALARM2": ST_ALARM2, "ST_DUE_TO_TRIP": ST_DUE_TO_TRIP, "ST_MAY_CLOSE": ST_MAY_CLOSE,
    "FLAG_TIME_UNTRUSTED": FLAG_TIME_UNTRUSTED, "FLAG_ROLLOVER": FLAG_ROLLOVER,
    "FLAG_DISCONTINUITY": FLAG_DISCONTINUITY,
}
"""The constants compiled in; a test checks them against layout.py."""


cdef inline long long* _q(object obj) except? NULL:
    """The data of an array('q') (anything else is refused)."""
    cdef carray.array a
    if type(obj) is not carray.array:
        raise TypeError("rate_batch: arrays must be array('q')")
    a = <carray.array>obj
    if a.ob_descr.typecode != b"q"[0]:
        raise TypeError("rate_batch: arrays must be array('q')")
    return a.data.as_longlongs


cdef inline long long _evaluate(
    long long kind, long long trip, long long tripped, long long balance, long long alarm1,
    long long alarm2, long long overdraft, long long close_allow,
) noexcept nogil:
    if kind == ACCOUNT_UNBILLED:
        return ST_NORMAL
    cdef bint trips = kind == ACCOUNT_PREPAID and trip != 0
    if trips and tripped != 0:
        if balance > close_allow and balance + overdraft > 0:
            return ST_MAY_CLOSE
        return ST_DUE_TO_TRIP
    if trips and balance + overdraft <= 0:
        return ST_DUE_TO_TRIP
    if balance <= alarm2:
        return ST_ALARM2
    if balance <= alarm1:
        return ST_ALARM1
    return ST_NORMAL


def evaluate_state(st, Py_ssize_t a, long long balance):
    cdef long long[:] a_type = st.a_type
    cdef long long[:] a_trip = st.a_trip
    cdef long long[:] a_tripped = st.a_tripped
    cdef long long[:] a_alarm1 = st.a_alarm1
    cdef long long[:] a_alarm2 = st.a_alarm2
    cdef long long[:] a_overdraft = st.a_overdraft
    cdef long long[:] a_close = st.a_close
    return _evaluate(a_type[a], a_trip[a], a_tripped[a], balance, a_alarm1[a], a_alarm2[a],
                     a_overdraft[a], a_close[a])


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
def rate_batch(tb, st, bt, out, Py_ssize_t start):
    # Raw pointers into the array('q') objects (checked once per batch): cheaper to
    # take than typed memoryviews, and as unchecked inside the loop (boundscheck off).
    cdef Py_ssize_t n = bt.n
    cdef Py_ssize_t cap = len(out.l_seg)
    if start < 0 or len(bt.r_reg) < n * NREG or any(
        len(a) < n for a in (
            bt.r_meter, bt.r_ts, bt.r_energy, bt.r_flags, out.status, out.amount, out.line0,
            out.nline, out.balance, out.old_state, out.new_state, out.regs, out.year,
            out.year_end, out.span,
        )
    ) or any(
        len(a) != cap for a in (
            out.l_reading, out.l_energy, out.l_price, out.l_amount, out.l_t0, out.l_t1,
            out.l_cum, out.l_posted,
        )
    ):
        raise ValueError("rate_batch: arrays shorter than the batch")
    cdef long long nseg = tb.nseg
    cdef long long* t_ver_start = _q(tb.t_ver_start)
    cdef long long* t_ver_count = _q(tb.t_ver_count)
    cdef long long* t_has_tou = _q(tb.t_has_tou)
    cdef long long* v_eff = _q(tb.v_eff)
    cdef long long* v_kind = _q(tb.v_kind)
    cdef long long* v_seg = _q(tb.v_seg)
    cdef long long* v_price_off = _q(tb.v_price_off)
    cdef long long* v_thr_off = _q(tb.v_thr_off)
    cdef long long* v_nthr = _q(tb.v_nthr)
    cdef long long* v_tl_off = _q(tb.v_tl_off)
    cdef long long* v_tl_count = _q(tb.v_tl_count)
    cdef long long* v_tl_end = _q(tb.v_tl_end)
    cdef long long* v_regkey = _q(tb.v_regkey)
    cdef long long* prices = _q(tb.prices)
    cdef long long* thresholds = _q(tb.thresholds)
    cdef long long* tl_us = _q(tb.tl_us)
    cdef long long* tl_key = _q(tb.tl_key)
    cdef long long* m_tariff = _q(st.m_tariff)
    cdef long long* m_account = _q(st.m_account)
    cdef long long* m_has_last = _q(st.m_has_last)
    cdef long long* m_last_ts = _q(st.m_last_ts)
    cdef long long* m_last_e = _q(st.m_last_e)
    cdef long long* m_rollover = _q(st.m_rollover)
    cdef long long* m_reg = _q(st.m_reg)
    cdef long long* m_cum = _q(st.m_cum)
    cdef long long* m_posted = _q(st.m_posted)
    cdef long long* m_reg_tol = _q(st.m_reg_tol)
    cdef long long* a_thr_from = _q(st.a_thr_from)
    cdef long long* a_thr_to = _q(st.a_thr_to)
    cdef long long* a_thr_tariff = _q(st.a_thr_tariff)
    cdef long long* a_year = _q(st.a_year)
    cdef long long* a_thr_set = _q(st.a_thr_set)
    cdef long long* a_nthr = _q(st.a_nthr)
    cdef long long* a_thr = _q(st.a_thr)
    cdef long long* a_year_end = _q(st.a_year_end)
    cdef long long* a_balance = _q(st.a_balance)
    cdef long long* a_alarm1 = _q(st.a_alarm1)
    cdef long long* a_alarm2 = _q(st.a_alarm2)
    cdef long long* a_overdraft = _q(st.a_overdraft)
    cdef long long* a_close = _q(st.a_close)
    cdef long long* a_type = _q(st.a_type)
    cdef long long* a_trip = _q(st.a_trip)
    cdef long long* a_tripped = _q(st.a_tripped)
    cdef long long* a_state = _q(st.a_state)
    cdef long long* r_meter = _q(bt.r_meter)
    cdef long long* r_ts = _q(bt.r_ts)
    cdef long long* r_energy = _q(bt.r_energy)
    cdef long long* r_flags = _q(bt.r_flags)
    cdef long long* r_reg = _q(bt.r_reg)
    cdef long long* o_status = _q(out.status)
    cdef long long* o_amount = _q(out.amount)
    cdef long long* o_line0 = _q(out.line0)
    cdef long long* o_nline = _q(out.nline)
    cdef long long* o_balance = _q(out.balance)
    cdef long long* o_old_state = _q(out.old_state)
    cdef long long* o_new_state = _q(out.new_state)
    cdef long long* o_regs = _q(out.regs)
    cdef long long* o_year = _q(out.year)
    cdef long long* o_year_end = _q(out.year_end)
    cdef long long* o_span = _q(out.span)
    cdef long long* o_used = _q(out.used)
    cdef long long* l_reading = _q(out.l_reading)
    cdef long long* l_seg = _q(out.l_seg)
    cdef long long* l_energy = _q(out.l_energy)
    cdef long long* l_price = _q(out.l_price)
    cdef long long* l_amount = _q(out.l_amount)
    cdef long long* l_t0 = _q(out.l_t0)
    cdef long long* l_t1 = _q(out.l_t1)
    cdef long long* l_cum = _q(out.l_cum)
    cdef long long* l_posted = _q(out.l_posted)
    # The GIL is kept: the batch is a few microseconds, and holding it keeps the
    # kernel atomic against Python code changing the same arrays (a top-up, say).
    return _rate(
        nseg, t_ver_start, t_ver_count, t_has_tou, v_eff, v_kind, v_seg, v_price_off,
        v_thr_off, v_nthr, v_tl_off, v_tl_count, v_tl_end, v_regkey, prices, thresholds,
        tl_us, tl_key, m_tariff, m_account, m_has_last, m_last_ts, m_last_e, m_rollover,
        m_reg, m_cum, m_posted, a_year, a_thr_set, a_nthr, a_thr, a_year_end, a_balance,
        a_alarm1, a_alarm2, a_overdraft, a_close, a_type, a_trip, a_tripped, a_state, n,
        r_meter, r_ts, r_energy, r_flags, r_reg, o_status, o_amount, o_line0, o_nline,
        o_balance, o_old_state, o_new_state, o_regs, o_year, o_span, o_used, l_reading,
        l_seg, l_energy, l_price, l_amount, l_t0, l_t1, l_cum, l_posted, start, cap,
        m_reg_tol, a_thr_from, a_thr_to, a_thr_tariff, o_year_end,
    )


@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef Py_ssize_t _rate(
    long long nseg, long long* t_ver_start, long long* t_ver_count,
    long long* t_has_tou, long long* v_eff, long long* v_kind, long long* v_seg,
    long long* v_price_off, long long* v_thr_off, long long* v_nthr,
    long long* v_tl_off, long long* v_tl_count, long long* v_tl_end,
    long long* v_regkey, long long* prices, long long* thresholds,
    long long* tl_us, long long* tl_key, long long* m_tariff, long long* m_account,
    long long* m_has_last, long long* m_last_ts, long long* m_last_e,
    long long* m_rollover, long long* m_reg, long long* m_cum, long long* m_posted,
    long long* a_year, long long* a_thr_set, long long* a_nthr, long long* a_thr,
    long long* a_year_end, long long* a_balance, long long* a_alarm1,
    long long* a_alarm2, long long* a_overdraft, long long* a_close,
    long long* a_type, long long* a_trip, long long* a_tripped, long long* a_state,
    Py_ssize_t n, long long* r_meter, long long* r_ts, long long* r_energy,
    long long* r_flags, long long* r_reg, long long* o_status, long long* o_amount,
    long long* o_line0, long long* o_nline, long long* o_balance,
    long long* o_old_state, long long* o_new_state, long long* o_regs,
    long long* o_year, long long* o_span, long long* o_used, long long* l_reading,
    long long* l_seg, long long* l_energy, long long* l_price, long long* l_amount,
    long long* l_t0, long long* l_t1, long long* l_cum, long long* l_posted,
    Py_ssize_t start, Py_ssize_t cap, long long* m_reg_tol, long long* a_thr_from, long long* a_thr_to,
    long long* a_thr_tariff, long long* o_year_end,
) noexcept nogil:
    cdef long long p_key[MAX_PARTS]
    cdef long long p_energy[MAX_PARTS]
    cdef long long p_t0[MAX_PARTS]
    cdef long long p_t1[MAX_PARTS]
    cdef long long p_price[MAX_PARTS]
    cdef long long thr[MAX_TIERS]
    cdef long long regs[NREG]
    cdef Py_ssize_t nl = o_used[0]
    cdef Py_ssize_t i = start
    cdef Py_ssize_t m, a, t, v, k, j, first, last, np, off, cnt, lo, hi, mid, row, idx
    cdef long long state, energy, flags, delta, t0, t1, kind, year_end, span, cur, prev
    cdef long long reg_sum, big, base, poff, nthr, toff, year, done, begin, end, tier
    cdef long long room, take, key, whole, acc, upto_done, upto, share, total, e, cum
    cdef long long cost, charge, amount, balance
    cdef long long owner, untrusted, ts
    cdef int use_regs, every, first_k, fits
    while i < n:
        if cap - nl < MAX_PARTS:
            o_status[i] = NEED_ROOM
            o_used[0] = nl
            return i
        m = r_meter[i]
        t = m_tariff[m]
        a = m_account[m]
        o_line0[i] = nl
        o_nline[i] = 0
        o_amount[i] = 0
        o_regs[i] = 0
        o_span[i] = 0
        if t < 0:
            o_status[i] = S_NOT_CHARGED
            o_balance[i] = 0
            o_year[i] = 0
            o_year_end[i] = _NONE
            o_old_state[i] = ST_NORMAL
            o_new_state[i] = ST_NORMAL
            i += 1
            continue
        state = a_state[a]
        o_old_state[i] = state
        o_new_state[i] = state
        o_balance[i] = a_balance[a]
        o_year[i] = a_year[a]
        o_year_end[i] = a_year_end[a]
        energy = r_energy[i]
        flags = r_flags[i]
        if energy < 0:
            o_status[i] = S_NO_ENERGY
            i += 1
            continue
        if m_has_last[m] == 0 or flags & FLAG_DISCONTINUITY:
            m_has_last[m] = 1
            m_last_ts[m] = r_ts[i]
            m_last_e[m] = energy
            for j in range(NREG):
                m_reg[m * NREG + j] = r_reg[i * NREG + j]
            o_status[i] = S_BASELINE
            i += 1
            continue
        untrusted = flags & FLAG_TIME_UNTRUSTED
        ts = m_last_ts[m] if untrusted else r_ts[i]
        delta = energy - m_last_e[m]
        if delta < 0 and flags & FLAG_ROLLOVER and m_rollover[m] > 0:
            delta += m_rollover[m]
        if delta < 0:
            m_has_last[m] = 1
            m_last_ts[m] = ts
            m_last_e[m] = energy
            for j in range(NREG):
                m_reg[m * NREG + j] = r_reg[i * NREG + j]
            o_status[i] = S_BASELINE
            i += 1
            continue
        t0 = m_last_ts[m] * 1000
        t1 = r_ts[i] * 1000
        if t1 < t0 or untrusted:
            t1 = t0
        if untrusted and t_has_tou[t] != 0:
            o_status[i] = S_DEFERRED
            i += 1
            continue
        first = t_ver_start[t]
        last = first + t_ver_count[t]
        v = -1
        k = first
        while k < last and v_eff[k] <= t0:
            v = k
            k += 1
        if v < 0:
            m_has_last[m] = 1
            m_last_ts[m] = ts
            m_last_e[m] = energy
            for j in range(NREG):
                m_reg[m * NREG + j] = r_reg[i * NREG + j]
            o_status[i] = S_NO_TARIFF
            i += 1
            continue
        if v + 1 < last and v_eff[v + 1] < t1:
            o_status[i] = FALLBACK_VERSION
            break
        kind = v_kind[v]
        if kind == KIND_PYTHON:
            o_status[i] = FALLBACK_UNSUPPORTED
            break
        year_end = a_year_end[a]
        if year_end != _NONE and (t1 > year_end or t0 >= year_end):
            o_status[i] = FALLBACK_YEAR_END
            break
        span = t1 - t0
        use_regs = 0
        reg_sum = 0
        if kind == KIND_TOU:
            use_regs = 1
            for j in range(NREG):
                cur = r_reg[i * NREG + j]
                prev = m_reg[m * NREG + j]
                if cur < 0 or prev < 0:
                    use_regs = 0
                    break
                regs[j] = cur - prev
                if regs[j] < 0 and flags & FLAG_ROLLOVER and m_rollover[m] > 0:
                    regs[j] += m_rollover[m]
                if regs[j] < 0:
                    use_regs = 0
                    break
                reg_sum += regs[j]
            if use_regs and (reg_sum - delta > m_reg_tol[m] or delta - reg_sum > m_reg_tol[m]):
                use_regs = 0
            if not use_regs:
                reg_sum = 0
        big = reg_sum if use_regs and reg_sum > delta else delta
        if big > _LIMIT // (span + 1):
            o_status[i] = FALLBACK_RANGE
            break
        base = v_seg[v]
        poff = v_price_off[v]
        np = 0
        if kind == KIND_FLAT:
            p_key[0] = 0
            p_energy[0] = delta
            p_t0[0] = t0
            p_t1[0] = t1
            p_price[0] = prices[poff]
            np = 1
        elif kind == KIND_TIERED:
            nthr = v_nthr[v]
            owner = a_thr_tariff[a]
            if t0 < a_thr_from[a] or t0 >= a_thr_to[a] or (owner >= 0 and owner != t):
                o_status[i] = FALLBACK_THRESHOLDS
                break
            if a_thr_set[a] != 0:
                if a_nthr[a] != nthr:
                    o_status[i] = FALLBACK_THRESHOLDS
                    break
                for k in range(nthr):
                    thr[k] = a_thr[a * MAX_TIERS + k]
            else:
                toff = v_thr_off[v]
                for k in range(nthr):
                    thr[k] = thresholds[toff + k]
            year = a_year[a]
            done = 0
            begin = t0
            while True:
                tier = 0
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
                p_price[np] = prices[poff + tier]
                np += 1
                begin = end
                if done == delta:
                    break
        else:
            off = v_tl_off[v]
            cnt = v_tl_count[v]
            if cnt == 0 or t0 < tl_us[off] or t1 > v_tl_end[v]:
                o_status[i] = FALLBACK_TIMELINE
                break
            lo = off
            hi = off + cnt
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if tl_us[mid] <= t0:
                    lo = mid
                else:
                    hi = mid
            k = lo
            begin = t0
            while True:
                if np == MAX_PARTS:
                    break
                p_key[np] = tl_key[k]
                p_t0[np] = begin
                p_price[np] = prices[poff + tl_key[k]]
                if k + 1 < off + cnt and tl_us[k + 1] < t1:
                    begin = tl_us[k + 1]
                    p_t1[np] = begin
                    np += 1
                    k += 1
                else:
                    p_t1[np] = t1
                    np += 1
                    break
            if np == MAX_PARTS and p_t1[np - 1] != t1:
                o_status[i] = FALLBACK_TIMELINE
                break
            if use_regs:
                for k in range(np):
                    p_energy[k] = 0
                for j in range(NREG):
                    if regs[j] < 0:
                        continue
                    key = v_regkey[v * NREG + j]
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
        total = 0
        for k in range(np):
            total += p_energy[k]
        row = m * nseg + base
        fits = 1
        for k in range(np):
            if m_cum[row + p_key[k]] + total > _ENERGY_MAX or p_price[k] > _PRICE_MAX:
                fits = 0
        if not fits:
            o_status[i] = FALLBACK_RANGE
            break
        amount = 0
        for k in range(np):
            e = p_energy[k]
            if e == 0:
                continue
            idx = row + p_key[k]
            cum = m_cum[idx] + e
            cost = (cum * p_price[k] + 500) // 1000
            charge = cost - m_posted[idx]
            m_cum[idx] = cum
            m_posted[idx] = cost
            l_reading[nl] = i
            l_seg[nl] = base + p_key[k]
            l_energy[nl] = e
            l_price[nl] = p_price[k]
            l_amount[nl] = charge
            l_t0[nl] = p_t0[k]
            l_t1[nl] = p_t1[k]
            l_cum[nl] = cum
            l_posted[nl] = cost
            nl += 1
            amount += charge
        a_year[a] += total
        o_year[i] = a_year[a]
        o_year_end[i] = a_year_end[a]
        m_has_last[m] = 1
        m_last_ts[m] = ts
        m_last_e[m] = energy
        for j in range(NREG):
            m_reg[m * NREG + j] = r_reg[i * NREG + j]
        o_nline[i] = nl - o_line0[i]
        o_amount[i] = amount
        o_regs[i] = use_regs
        o_span[i] = span
        if a_type[a] == ACCOUNT_UNBILLED:
            o_amount[i] = 0
            o_status[i] = S_UNBILLED
            i += 1
            continue
        balance = a_balance[a] - amount
        a_balance[a] = balance
        state = _evaluate(a_type[a], a_trip[a], a_tripped[a], balance, a_alarm1[a],
                          a_alarm2[a], a_overdraft[a], a_close[a])
        if state == ST_DUE_TO_TRIP:
            a_tripped[a] = 1
        a_state[a] = state
        o_balance[i] = balance
        o_new_state[i] = state
        o_status[i] = S_RATED
        i += 1
    o_used[0] = nl
    return i
