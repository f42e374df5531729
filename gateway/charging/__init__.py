"""Charging: each reading rated in memory, acted on at once, then written durably with its
charges (design.md: "A trip action does not wait for the store"; data flow: reading ->
rating -> ledger + journal in one transaction).

A :class:`Charger` is the poller's :class:`~gateway.poller.Journal`.  It keeps a cache
loaded from the store at start (:meth:`Charger.reload` re-reads it): each billed meter's
rating state, each account's balance, billing-year tier total, type, trip flag,
thresholds and prepaid state.  :meth:`Charger.submit` (a bus thread) rates a billed
reading in memory on the fast path (:mod:`gateway.charging.fast`: the compiled kernel,
or its twin; :func:`rate_reading` of :mod:`gateway.charging.rate` stays the Python
reference it is tested against), moves the balance, evaluates the account's prepaid state
(:class:`~gateway.prepaid.StateTracker`) and calls the listeners with any change, and only
then queues one durable transaction that writes exactly those results: the reading, its
charges, the meter's rating state, the account's tier total and prepaid state, and a
:data:`~gateway.protocols.quantities.EventCode.PREPAID_STATE` event when the state
changed.  Memory is ahead of disk by the writer's queue.  A transaction that fails is
retried with a bounded back-off; if it keeps failing, one line is logged, it is
counted (``lost``) and the cache is reloaded from the store, so memory never stays ahead
of what the disk will ever hold.  Events and readings of meters that are not charged go
to the store writer as before.

Rules (:func:`rate_reading`): the first reading of a meter is its baseline (no charge);
no consumption across :data:`~gateway.protocols.quantities.FLAG_DISCONTINUITY` (the
reading is the new baseline); a rollover's consumption is new + range - old; a fall the
poller did not flag is a new baseline (no credit); an unbilled account is never charged
(its state and tier total still advance); an interval with no tariff version in force is
journaled uncharged (logged) and its reading becomes the baseline.  While the clock is
untrusted a time-of-use tariff is not rated: the baseline stays at the last trusted
reading and the whole stretch is rated at the first trusted one; any other tariff rates
the energy at the last trusted time (the meter's state keeps that time, so a clock far
off, before or after, neither loses consumption nor crosses a tariff change or the
yearly tier reset).  A DL/T 645 meter's
per-tariff registers (0001FF00: tariffs 1-4), when the reading carries all four and they
agree with the total, give the energy of each time-of-use slot
(:attr:`~gateway.billing.Interval.slot_wh`); otherwise energy is apportioned by time.  The
billing-year tier total is kept per account (shared by its meters) and resets at
``billing.year_start`` (:class:`~gateway.billing.BillingYear`); an account opened within
the year (``opened``) has its tier thresholds prorated.  A customer meter with no account
is charged to the ``vacancy`` account at ``billing.vacancy_tariff`` when one is set (else
not charged).  Meters the store records as removed, replaced or held
(:mod:`gateway.store.meters`) are not charged; a recorded account and ratio win over the
configuration's.  A lifecycle transaction goes through :meth:`Charger.apply`: under the
lock, the queued readings written first, then the transaction, then the reload, so no
reading rated in memory slips in between.

Threads: bus threads, the command thread and the relays call in; one re-entrant lock
guards the cache.  Listeners are called in order of the changes, outside the lock: when
another thread is delivering, a change is handed to it (so a listener may run on another
thread than the one that changed the balance, never concurrently with another listener,
never out of order).  A top-up's cache update and listeners run on the charger's own
thread once the top-up is on disk.  A listener must not call :meth:`Charger.reload` (it
waits for the readings in flight, one of which may be the caller's).  Reads
(:meth:`Charger.balance`, :meth:`Charger.state` ...) take no lock.
"""

from __future__ import annotations

from gateway.charging.charger import Charger, Listener
from gateway.charging.rate import AccountYear, Billing, Rated, RatingRow, billing_of, rate_reading
from gateway.charging.state import Charged, load_state, post_reading, save_state

__all__ = [
    "AccountYear",
    "Billing",
    "Charged",
    "Charger",
    "Listener",
    "Rated",
    "RatingRow",
    "billing_of",
    "load_state",
    "post_reading",
    "rate_reading",
    "save_state",
]
