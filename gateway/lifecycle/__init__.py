"""Meter lifecycle (domain.md, "Meter lifecycle" and "the hard cases"): add, remove,
replace, change the CT ratio, settle a dead meter, confirm a meter whose number changed.

Modules: :mod:`.swap` (add, remove, replace, CT change), :mod:`.hard_cases` (dead
meters, a held meter confirmed), :mod:`.accounts` (accounts opened, changed, closed by
command, kept in the store), :mod:`.base` (results and the steps they share).

Each function runs inside ONE store-writer transaction the caller owns and takes its
Database (``writer.call(lambda db: remove_meter(db, ...), durable=True)``): the final
reading, its charges, a refund, the new baseline, the meter records
(:mod:`gateway.store.meters`), the event and the operation's log row are committed
together or not at all.  In a running gateway run them through
``runtime.charger.apply(fn)`` (:meth:`gateway.charging.Charger.apply`): charging paused,
the queued readings written first, the transaction, then the charger's reload, so no
reading rated in memory slips in between (the commands METER_CHANGE and ACCOUNT_CHANGE
do: :mod:`gateway.commands.changes`).

- :func:`add_meter` (加表): the start reading is the baseline and the account and ratio
  are recorded; a meter removed before may go to another account.
- :func:`remove_meter`: the final reading is rated and charged
  (:func:`gateway.charging.post_reading`), the meter is recorded *removed* (never charged
  again) and, with ``refund=True``, a positive balance of its account is paid back by a
  REFUND entry that brings it to 0 (arrears stay on the account).  If the account has
  other meters the refund is the caller's explicit choice.  Event METER_REMOVED.
- :func:`replace_meter`: the old meter's final reading is charged; the new meter's
  initial reading is its baseline (nothing is charged across the swap); the old meter's
  rounding accumulators move to the new one (added to any it has), so the position's
  charges keep one rounding and never drift; the tier total is the account's
  (``rating_year``) and simply goes on.  Event METER_REPLACED on the old meter.
- :func:`change_ct`: a replacement of the meter by itself: the final reading at the old
  ratio is charged, the initial reading at the new ratio is the baseline, the new ratio
  recorded.  Event METER_REPLACED with both ratios.
- :func:`settle_dead_meter`: a meter that no longer answers is settled from its last
  rated reading either by an approved manual final reading (its register x ratio, read
  off the display by a person) or by an estimated back-charge (追补: the energy a person
  estimated it used since), journaled as a reading flagged FLAG_ESTIMATED and charged
  like any other; then the meter is recorded removed (a replacement may follow with
  ``old_final=None``).  Event DEAD_METER_SETTLED with who approved it and why.
- :func:`confirm_meter`: a meter *held* because its nameplate number changed without a
  work order (:func:`gateway.store.meters.hold`; charging journals its readings but does
  not charge them) is confirmed by a person: charging resumes from the reading where the
  new meter showed up (the held stretch is charged) or, with ``charge_held=False``, from
  its latest reading (the held stretch is not).  The caller also calls
  ``Poller.confirm(meter)``.

``calendar`` is the billing year (``Charger.calendar``: ``billing.year_start``; default
01-01) under which the final interval is rated.  Money and energy are integers (0.0001
yuan, Wh x ratio as journaled).  Every operation is logged once by its reference
(default ``<kind>:<meter>:<ts_ms>``); a repeat, or an operation on a meter already
removed or replaced, raises :class:`~gateway.errors.LifecycleRefused` and writes nothing.
"""

from gateway.lifecycle.accounts import (
    AccountResult,
    billing_in,
    change_account,
    close_account,
    open_account,
)
from gateway.lifecycle.base import DeadMeterResult, RemovalResult, ReplacementResult, billing_of
from gateway.lifecycle.hard_cases import confirm_meter, settle_dead_meter
from gateway.lifecycle.swap import add_meter, change_ct, remove_meter, replace_meter

__all__ = [
    "AccountResult",
    "DeadMeterResult",
    "RemovalResult",
    "ReplacementResult",
    "add_meter",
    "billing_in",
    "billing_of",
    "change_account",
    "change_ct",
    "close_account",
    "confirm_meter",
    "open_account",
    "remove_meter",
    "replace_meter",
    "settle_dead_meter",
]
