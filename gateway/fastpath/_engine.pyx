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
