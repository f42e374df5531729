"""The typed arrays the rating kernel reads and writes (both builds share this layout).

Every array is ``array('q')`` (int64).  Times are UTC microseconds since the epoch in
the tables and the results (``ts`` of readings and meters: milliseconds), energy Wh,
money 0.0001 yuan, prices 0.0001 yuan per kWh.  Indexes: ``t`` a tariff id, ``v`` a
tariff version (row of the version table), ``g`` a rounding accumulator (segment:
one tariff version and one ``flat`` / ``slot:N`` / ``tier:N`` key), ``m`` a meter,
``a`` an account, ``i`` a reading of the batch.  Per-meter segment arrays are
``m * nseg + g``; per-account thresholds ``a * MAX_TIERS + k``; registers
``m * NREG + j`` / ``i * NREG + j`` (``j`` = DL/T 645 tariff register ``j + 1``).
"""

from __future__ import annotations

from array import array

__all__ = [
    "ACCOUNT_POSTPAID",
    "ACCOUNT_PREPAID",
    "ACCOUNT_UNBILLED",
    "FALLBACK_RANGE",
    "FALLBACK_THRESHOLDS",
    "FALLBACK_TIMELINE",
    "FALLBACK_UNSUPPORTED",
    "FALLBACK_VERSION",
    "FALLBACK_YEAR_END",
    "FLAG_DISCONTINUITY",
    "FLAG_ROLLOVER",
    "FLAG_TIME_UNTRUSTED",
    "KIND_FLAT",
    "KIND_PYTHON",
    "KIND_TIERED",
    "KIND_TOU",
    "MAX_PARTS",
    "MAX_TIERS",
    "NEED_ROOM",
    "NONE",
    "NREG",
    "STATES",
    "ST_ALARM1",
    "ST_ALARM2",
    "ST_DUE_TO_TRIP",
    "ST_MAY_CLOSE",
    "ST_NORMAL",
    "S_BASELINE",
    "S_DEFERRED",
    "S_ERROR",
    "S_NOT_CHARGED",
    "S_NO_ENERGY",
    "S_NO_TARIFF",
    "S_RATED",
    "S_UNBILLED",
    "UNKNOWN",
    "Batch",
    "Out",
    "State",
    "Tables",
    "zeros",
]

NONE = 2**63 - 1
"""No time (no yearly reset set): the largest int64."""
UNKNOWN = -(2**63)
"""A yearly reset not known yet (the smallest int64): every interval reaches it, so the
kernel hands the reading to Python, which works the reset out."""
NREG = 4
"""Per-tariff energy registers per meter (DL/T 645 00010100..00010400: slots 1..4)."""
MAX_TIERS = 8
"""Most tier thresholds the kernel handles (more: the version is rated in Python)."""
MAX_PARTS = 64
"""Most charge lines one reading may give in the kernel (more: rated in Python)."""

# Reading flags (same bits as gateway.protocols.quantities; fastpath imports nothing else).
FLAG_TIME_UNTRUSTED = 1
FLAG_ROLLOVER = 4
FLAG_DISCONTINUITY = 8

KIND_FLAT, KIND_TOU, KIND_TIERED, KIND_PYTHON = 0, 1, 2, 3
"""Version kinds; ``KIND_PYTHON``: the kernel hands every interval of it to Python."""

ACCOUNT_PREPAID, ACCOUNT_POSTPAID, ACCOUNT_UNBILLED = 0, 1, 2

ST_NORMAL, ST_ALARM1, ST_ALARM2, ST_DUE_TO_TRIP, ST_MAY_CLOSE = 0, 1, 2, 3, 4
STATES = ("normal", "alarm1", "alarm2", "due_to_trip", "may_close")
"""State code -> ``gateway.prepaid.PrepaidState`` value."""

# Per-reading status (out.status).  Done by the kernel:
S_RATED = 0  #: charged; the balance changed by the amount
S_BASELINE = 1  #: first reading, discontinuity or an unflagged fall: a new baseline
S_DEFERRED = 2  #: time untrusted and the tariff has time of use: nothing changed
S_NO_TARIFF = 3  #: no tariff version in force at the interval's start: a new baseline
S_NO_ENERGY = 4  #: the reading has no forward energy: nothing changed
S_NOT_CHARGED = 5  #: the meter has no tariff: nothing changed
S_UNBILLED = 6  #: rated (the state advanced) but the account is unbilled: nothing posted
S_ERROR = 7  #: rating raised (set by the wrapper; the reading changed nothing)
# Why the kernel stopped at a reading (the caller rates it in Python, then resumes):
FALLBACK_VERSION = 10  #: a tariff version takes effect inside the interval
FALLBACK_YEAR_END = 11  #: the interval reaches the account's yearly tier reset
FALLBACK_RANGE = 12  #: sizes beyond int64 safety (energy x duration, cumulative energy)
FALLBACK_TIMELINE = 13  #: outside the batch's time-of-use table, or too many lines
FALLBACK_THRESHOLDS = 14  #: the account's prorated thresholds do not fit the version
FALLBACK_UNSUPPORTED = 15  #: a tariff version the kernel cannot hold (KIND_PYTHON)
NEED_ROOM = 19  #: the line arrays are full (internal: the wrapper grows them)


def zeros(n: int) -> array[int]:
    """An int64 array of ``n`` zeros."""
    return array("q", bytes(8 * n))


class Tables:
    """Tariff tables: static per tariff book (versions, prices, thresholds, segments)
    plus the time-of-use timeline of the batch's span."""

    def __init__(self) -> None:
        self.nseg = 0  #: segments (rounding accumulators) over all versions
        self.t_ver_start = zeros(0)  #: [t] first version row of tariff t
        self.t_ver_count = zeros(0)  #: [t] its version rows (ascending effective time)
        self.t_has_tou = zeros(0)  #: [t] 1 if any version is time of use
        self.v_eff = zeros(0)  #: [v] effective time, us
        self.v_kind = zeros(0)  #: [v] KIND_*
        self.v_seg = zeros(0)  #: [v] its first segment; key k is segment v_seg[v] + k
        self.v_price_off = zeros(0)  #: [v] its prices in ``prices`` (one per key)
        self.v_thr_off = zeros(0)  #: [v] tiered: its thresholds in ``thresholds``
        self.v_nthr = zeros(0)  #: [v] tiered: how many thresholds
        self.v_tl_off = zeros(0)  #: [v] time of use: its timeline in ``tl_us``/``tl_key``
        self.v_tl_count = zeros(0)  #: [v] spans in its timeline (0: none built)
        self.v_tl_end = zeros(0)  #: [v] the timeline covers [tl_us[off], v_tl_end[v])
        self.v_regkey = zeros(0)  #: [v * NREG + j] key of slot j + 1, -1 if none
        self.prices = zeros(0)
        self.thresholds = zeros(0)
        self.tl_us = zeros(0)  #: span starts, us, ascending per version
        self.tl_key = zeros(0)  #: key (slot's index in the version) of each span


class State:
    """Meters' and accounts' state; the kernel updates it in place."""

    def __init__(self) -> None:
        self.m_tariff = zeros(0)  #: [m] tariff index, -1: not charged
        self.m_account = zeros(0)  #: [m] account index
        self.m_has_last = zeros(0)  #: [m] 1 once a baseline reading is known
        self.m_last_ts = zeros(0)  #: [m] ms
        self.m_last_e = zeros(0)  #: [m] Wh
        self.m_rollover = zeros(0)  #: [m] register range x ratio (DL/T 645), 0: none
        self.m_reg = zeros(0)  #: [m * NREG + j] last per-tariff register, -1 absent
        self.m_cum = zeros(0)  #: [m * nseg + g] cumulative energy rated
        self.m_posted = zeros(0)  #: [m * nseg + g] cumulative amount posted
        #: [m] registers are not used when their sum strays further from the total
        self.m_reg_tol = zeros(0)
        self.a_year = zeros(0)  #: [a] billing-year energy, Wh
        self.a_thr_set = zeros(0)  #: [a] 1: prorated thresholds in a_thr, 0: the tariff's
        self.a_nthr = zeros(0)  #: [a] how many prorated thresholds (> MAX_TIERS: Python)
        self.a_thr = zeros(0)  #: [a * MAX_TIERS + k]
        #: [a] the thresholds hold for intervals starting in [a_thr_from, a_thr_to) (the
        #: billing year and tiered version they were prorated for), on tariff a_thr_tariff
        #: (-1: any); outside, Python works them out
        self.a_thr_from = zeros(0)
        self.a_thr_to = zeros(0)
        self.a_thr_tariff = zeros(0)
        #: [a] yearly tier reset, us; NONE: never; UNKNOWN: Python works it out
        self.a_year_end = zeros(0)
        self.a_balance = zeros(0)  #: [a]
        self.a_alarm1 = zeros(0)
        self.a_alarm2 = zeros(0)
        self.a_overdraft = zeros(0)
        self.a_close = zeros(0)
        self.a_type = zeros(0)  #: [a] ACCOUNT_*
        self.a_trip = zeros(0)  #: [a] 1: trips on arrears
        self.a_tripped = zeros(0)  #: [a] 1: held tripped until its relays close
        self.a_state = zeros(0)  #: [a] ST_*


class Batch:
    """The readings of one batch (``r_energy`` / ``r_reg`` -1: absent)."""

    def __init__(self, n: int = 0) -> None:
        self.n = n
        self.r_meter = zeros(n)
        self.r_ts = zeros(n)  #: ms
        self.r_energy = zeros(n)
        self.r_flags = zeros(n)
        self.r_reg = zeros(n * NREG)


class Out:
    """Results: per reading, and the charge lines (``used[0]`` of them filled)."""

    def __init__(self, n: int = 0, lines: int = 0) -> None:
        self.status = zeros(n)
        self.amount = zeros(n)  #: total charged (0.0001 yuan)
        self.line0 = zeros(n)  #: its first line
        self.nline = zeros(n)
        self.balance = zeros(n)  #: the account's balance after it
        self.old_state = zeros(n)
        self.new_state = zeros(n)
        self.regs = zeros(n)  #: 1: energy split by the per-tariff registers
        self.year = zeros(n)  #: the account's billing-year energy after it
        self.year_end = zeros(n)  #: and its yearly reset after it (us, NONE, UNKNOWN)
        self.span = zeros(n)  #: the rated interval's length, us
        self.used = zeros(1)
        self.l_reading = zeros(lines)
        self.l_seg = zeros(lines)
        self.l_energy = zeros(lines)
        self.l_price = zeros(lines)
        self.l_amount = zeros(lines)
        self.l_t0 = zeros(lines)  #: us
        self.l_t1 = zeros(lines)  #: us
        self.l_cum = zeros(lines)  #: the segment's cumulative energy after the line
        self.l_posted = zeros(lines)  #: the segment's cumulative amount after the line
