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

Layering: this package belongs to ``gateway.charging`` (design.md: ``gateway.fastpath``
imports nothing else of the package); it imports ``gateway.billing`` (the Python rating
for the cases above and the result types), ``gateway.prepaid`` and the kernel.

Modules: :mod:`~gateway.charging.fast.arrays` (the rating state in typed arrays),
:mod:`~gateway.charging.fast.rater` (:class:`BatchRater`: batches through the kernel, the
Python fallback), :mod:`~gateway.charging.fast.outcome` (:class:`Outcome`,
:class:`BatchResult`), :mod:`~gateway.charging.fast.rating` (:class:`Rating`, the Charger's).
"""

from gateway.charging.fast.outcome import FALLBACK, SMALL, STATUS, BatchResult, Outcome
from gateway.charging.fast.rater import BatchRater
from gateway.charging.fast.rating import Rating

__all__ = ["FALLBACK", "SMALL", "STATUS", "BatchRater", "BatchResult", "Outcome", "Rating"]
