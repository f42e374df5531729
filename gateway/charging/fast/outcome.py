"""What the fast path gives back for a batch: one :class:`Outcome` per reading, held by a
:class:`BatchResult` (built from the kernel's arrays on access), and the status and
fallback names (see :mod:`gateway.charging.fast`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, overload

from gateway.billing import ChargeLine, Running
from gateway.fastpath import layout as L
from gateway.fastpath.tables import SegmentKey, from_us
from gateway.prepaid import StateChange

if TYPE_CHECKING:
    from gateway.charging.fast.rater import BatchRater

__all__ = ["FALLBACK", "SMALL", "STATUS", "BatchResult", "Outcome"]

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
