"""A late tariff version re-rated from the journal: one adjustment (退补) per account
(domain.md, "Late or corrected tariffs").

The consumption to re-rate is the journal's readings of the tariff's meters from each
meter's *anchor* -- its last reading at or before the effective time that set its
rating state for sure (time trusted, an energy register, not a curve point) -- on.
They are replayed, account by account in journal order, through
:func:`gateway.charging.rate_reading`: the very rules the :class:`~gateway.charging.Charger`
rated them by (baselines, rollovers, the untrusted clock, per-tariff registers, the
account's shared tier total and its yearly reset).  This is :func:`gateway.billing.rerate`'s
algorithm (re-rate from the state before the first interval, Σ re-rated − Σ posted per
account) with the journal's readings instead of ready-made intervals.

The state before the window is the stored state wound back: each rounding accumulator
(meter, tariff, version, segment) less the window's energy on it (an accumulator always
holds ``cumulative_cost(energy, price)``), the account's tier total less the window's
energy.  Then the window is replayed under the old book and must reproduce, to the
unit, every charge the ledger holds for it and the stored states; an account where it
does not (its journal pruned, a meter changed mid-window, the yearly tier reset inside
the window) is left as it is and named in ``skipped`` with the reason.  Otherwise the
window is replayed under the new book: the meters' states and the account's tier total
become the re-rated ones (rating goes on from them) and the difference is posted as one
:attr:`~gateway.store.ledger.EntryKind.ADJUSTMENT` entry, reference
``tariff:<id>:v<version>:<account>``, with the reason.

Two steps, so that the bus threads wait only for the readings of the last moments:
:func:`plan_late` does the work on a consistent snapshot (a read transaction, any
connection, no lock) up to the journal's last position then; :func:`finish_late`, in
the durable transaction with charging paused, carries both replays on over the readings
written since, checks them the same way, and writes.  :func:`rerate_late` is both in
one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import ModuleType

from sqlite_utils import Database

from gateway import fastpath
from gateway.billing import Adjustment, BillingYear, ChargeLine, Running, SegmentKey, TariffBook
from gateway.charging import AccountYear, Billing, RatingRow, load_state, rate_reading
from gateway.charging.rate import when
from gateway.charging.state import load_year, save_state, save_year
from gateway.config.model import Tariff
from gateway.protocols.batch import LedgerEntry
from gateway.protocols.quantities import FLAG_CURVE, FLAG_TIME_UNTRUSTED, Quantity, Reading
from gateway.store.journal import Kind, decode_row
from gateway.store.ledger import EntryKind, post
from gateway.tariff_updates.versions import ms_of, rerated_upto

__all__ = [
    "LatePlan",
    "LateRerating",
    "adjustment_reference",
    "finish_late",
    "plan_late",
    "rerate_late",
]

Window = list[tuple[int, Reading]]


@dataclass(frozen=True, slots=True)
class LateRerating:
    """What re-rating a late version did."""

    adjustments: tuple[Adjustment, ...]  #: one per account whose charge changed
    entries: Mapping[str, LedgerEntry]  #: account -> its adjustment entry
    skipped: Mapping[str, str] = field(default_factory=dict)  #: account -> why not re-rated
    readings: int = 0  #: readings re-rated
    rerated: frozenset[str] = frozenset()  #: accounts re-rated (with an adjustment or not)
    position: int = 0  #: the journal's last reading position when it was done


def adjustment_reference(tariff: Tariff, account: str) -> str:
    return f"tariff:{tariff.id}:v{tariff.version}:{account}"


@dataclass(slots=True)
class _Replay:
    rows: dict[str, RatingRow | None]
    year: AccountYear
    amounts: dict[tuple[str, int], int] = field(default_factory=dict)
    lines: dict[tuple[str, int], tuple[ChargeLine, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Account:
    """One account re-rated up to the plan's position."""

    old: _Replay  #: its meters' states and tier total under the old book (= the stored)
    new: _Replay  #: the same under the new book
    rerated: int
    posted: int
    readings: int
    touched: frozenset[str]  #: meters with readings re-rated


@dataclass(frozen=True, slots=True)
class LatePlan:
    """The re-rating of ``tariff`` up to journal position ``position`` (readings)."""

    tariff: Tariff
    position: int
    accounts: Mapping[str, _Account]
    skipped: Mapping[str, str]
    settled: Mapping[str, int]  #: account -> last position an earlier version re-rated


class _Skip(Exception):
    """This account cannot be re-rated from the journal (the reason)."""


def rerate_late(
    db: Database,
    tariff: Tariff,
    old: TariffBook,
    new: TariffBook,
    billing: Mapping[str, Billing],
    calendar: BillingYear,
    *,
    ts_ms: int,
    reason: str,
    engine: ModuleType | None = None,
) -> LateRerating:
    """Re-rate the consumption since ``tariff.effective`` of every meter billed on
    ``tariff.id`` (``billing``: the charger's, meter -> how it is billed) under ``new``
    instead of ``old`` and post the adjustments at ``ts_ms``, in the caller's
    transaction (see the module docstring)."""
    plan = plan_late(db, tariff, old, new, billing, calendar, engine=engine)
    return finish_late(
        db, plan, old, new, billing, calendar, ts_ms=ts_ms, reason=reason, engine=engine
    )


def plan_late(
    db: Database,
    tariff: Tariff,
    old: TariffBook,
    new: TariffBook,
    billing: Mapping[str, Billing],
    calendar: BillingYear,
    *,
    engine: ModuleType | None = None,
) -> LatePlan:
    """The re-rating up to the journal's last position now; writes nothing.  Outside a
    transaction ``db`` gets a read transaction of its own (one consistent snapshot)."""
    own = not db.conn.in_transaction
    if own:
        db.execute("BEGIN")
    try:
        return _plan(db, tariff, old, new, billing, calendar, engine)
    finally:
        if own:
            db.execute("ROLLBACK")


def _plan(
    db: Database,
    tariff: Tariff,
    old: TariffBook,
    new: TariffBook,
    billing: Mapping[str, Billing],
    calendar: BillingYear,
    engine: ModuleType | None,
) -> LatePlan:
    meters = _on(tariff, billing)
    position = _last(db)
    settled = rerated_upto(db, tariff.id)
    windows, anchors = _windows(db, meters, ms_of(tariff.effective), position)
    accounts: dict[str, _Account] = {}
    skipped: dict[str, str] = {}
    for account, ms in _by_account(meters).items():
        window = sorted((p, r) for m in ms for p, r in windows[m])
        done = settled.get(account, 0)
        try:
            accounts[account] = _account(
                db, account, ms, window, anchors, meters, old, new, calendar, engine, done
            )
        except _Skip as why:
            if window:  # nothing read since: nothing to re-rate (unless read meanwhile)
                skipped[account] = str(why)
    return LatePlan(tariff, position, accounts, skipped, settled)


def finish_late(
    db: Database,
    plan: LatePlan,
    old: TariffBook,
    new: TariffBook,
    billing: Mapping[str, Billing],
    calendar: BillingYear,
    *,
    ts_ms: int,
    reason: str,
    engine: ModuleType | None = None,
) -> LateRerating:
    """Carry ``plan`` over the readings journaled after it, check, write the states and
    post the adjustments, in the caller's transaction."""
    tariff = plan.tariff
    meters = _on(tariff, billing)
    later: dict[str, Window] = {m: [] for m in meters}
    if meters:
        marks = ", ".join("?" for _ in meters)
        rows = db.execute(
            "SELECT r.id, m.name, r.ts_ms, r.flags, r.vals FROM readings r JOIN meters m"
            f" ON m.id = r.meter WHERE r.id > ? AND m.name IN ({marks}) ORDER BY r.id",
            (plan.position, *meters),
        )
        for row in rows:
            pos, reading = decode_row(Kind.READINGS, tuple(row))
            assert isinstance(reading, Reading)
            if not reading.flags & FLAG_CURVE:
                later[reading.meter].append((pos, reading))
    adjustments: list[Adjustment] = []
    entries: dict[str, LedgerEntry] = {}
    skipped = dict(plan.skipped)
    rerated: set[str] = set()
    count = 0
    for account, ms in _by_account(meters).items():
        window = sorted((p, r) for m in ms for p, r in later[m])
        planned = plan.accounts.get(account)
        if planned is None or account in skipped:
            if window and account not in skipped:
                skipped[account] = "read while the tariff was applied, nothing to re-rate from"
            continue
        try:
            done = _finish(
                db, account, ms, window, planned, meters, old, new, calendar, engine,
                plan.settled.get(account, 0),
            )  # fmt: skip
        except _Skip as why:
            skipped[account] = str(why)
            continue
        count += planned.readings + len(window)
        rerated.add(account)
        if done is None:
            continue
        adjustment = Adjustment(account, done[0] - done[1], done[0], done[1], reason)
        adjustments.append(adjustment)
        entries[account] = post(
            db,
            account,
            EntryKind.ADJUSTMENT,
            -adjustment.amount,  # the ledger's sign: what it does to the balance
            ts_ms,
            adjustment_reference(tariff, account),
            tariff_version=tariff.version,
            reason=reason,
        )
    return LateRerating(tuple(adjustments), entries, skipped, count, frozenset(rerated), _last(db))


def _finish(
    db: Database,
    account: str,
    ms: list[str],
    window: Window,
    planned: _Account,
    meters: Mapping[str, Billing],
    old: TariffBook,
    new: TariffBook,
    calendar: BillingYear,
    engine: ModuleType | None,
    settled: int,
) -> tuple[int, int] | None:
    """Write the account's re-rated states; (Σ re-rated, Σ posted) when they differ."""
    if any(m not in planned.old.rows for m in ms):
        raise _Skip("its meters changed while the tariff was applied")
    check = _replay(planned.old.rows, planned.old.year, window, meters, old, calendar, engine)
    _verify(db, account, ms, check, settled)
    final = _replay(planned.new.rows, planned.new.year, window, meters, new, calendar, engine)
    touched = planned.touched | {r.meter for _, r in window}
    if not touched:
        return None
    for meter in sorted(touched):
        row = final.rows[meter]
        if row is not None and row != check.rows[meter]:  # (check: the stored one)
            save_state(db, meter, row.last_ts_ms, row.last_energy_wh, row.totals, row.slots)
    if final.year != check.year:
        save_year(db, account, final.year)
    rerated = planned.rerated + sum(final.amounts.values())
    charged = planned.posted + sum(check.amounts.values())
    return None if rerated == charged else (rerated, charged)


def _last(db: Database) -> int:
    return int(db.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])


def _on(tariff: Tariff, billing: Mapping[str, Billing]) -> dict[str, Billing]:
    return {m: b for m, b in sorted(billing.items()) if b.tariff == tariff.id}


def _by_account(meters: Mapping[str, Billing]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for meter, b in sorted(meters.items()):
        out.setdefault(b.account, []).append(meter)
    return dict(sorted(out.items()))


def _windows(
    db: Database, meters: Mapping[str, Billing], effective_ms: int, upto: int
) -> tuple[dict[str, Window], dict[str, Reading]]:
    """Per meter, the readings after its anchor up to position ``upto`` (position
    order) and the anchor.  One backward scan, stopping once every meter has its anchor."""
    windows: dict[str, Window] = {m: [] for m in meters}
    anchors: dict[str, Reading] = {}
    if not meters:
        return windows, anchors
    marks = ", ".join("?" for _ in meters)
    cursor = db.execute(
        "SELECT r.id, m.name, r.ts_ms, r.flags, r.vals FROM readings r JOIN meters m"
        f" ON m.id = r.meter WHERE r.id <= ? AND m.name IN ({marks}) ORDER BY r.id DESC",
        (upto, *meters),
    )
    for row in cursor:
        meter = str(row[1])
        if meter in anchors:
            continue
        pos, reading = decode_row(Kind.READINGS, tuple(row))
        assert isinstance(reading, Reading)
        if reading.flags & FLAG_CURVE:
            continue  # a curve point is stored, never rated
        trusted = not reading.flags & FLAG_TIME_UNTRUSTED
        energy = Quantity.ENERGY_IMPORT in reading.values
        if trusted and energy and reading.ts_ms <= effective_ms:
            anchors[meter] = reading
            if len(anchors) == len(meters):
                break
            continue
        windows[meter].append((pos, reading))
    for window in windows.values():
        window.reverse()
    return windows, anchors


def _charges(db: Database, meter: str, position: int) -> dict[int, int]:
    """The charges the ledger holds for one reading: line index -> amount (a charge)."""
    prefix = f"{meter}:{position}:"
    rows = db.execute(
        "SELECT reference, amount FROM ledger WHERE kind = ? AND reference >= ? AND reference < ?",
        (int(EntryKind.CHARGE), prefix, prefix[:-1] + ";"),
    ).fetchall()
    return {int(str(ref).rsplit(":", 1)[1]): -int(amount) for ref, amount in rows}


def _replay(
    rows: Mapping[str, RatingRow | None],
    year: AccountYear,
    window: Window,
    meters: Mapping[str, Billing],
    book: TariffBook,
    calendar: BillingYear,
    engine: ModuleType | None,
) -> _Replay:
    out = _Replay(dict(rows), year)
    for pos, reading in window:
        meter = reading.meter
        rated = rate_reading(
            out.rows[meter], reading, meters[meter], book, out.year, calendar, engine=engine
        )
        if rated.state is not None:
            out.rows[meter] = rated.state
        if rated.year is not None:
            out.year = rated.year
        out.amounts[(meter, pos)] = rated.amount
        out.lines[(meter, pos)] = rated.lines
    return out


def _verify(db: Database, account: str, ms: list[str], check: _Replay, settled: int) -> None:
    """The old book's replay must give what the store holds, and what the ledger charged
    for each reading after ``settled`` (the charges of those before it were corrected
    by an earlier late version: what it re-rated them to is the old book's replay)."""
    for (meter, pos), amount in check.amounts.items():
        if pos > settled and amount != sum(_charges(db, meter, pos).values()):
            raise _Skip(f"meter {meter}: reading {pos} was charged otherwise")
    for m in ms:
        if check.rows[m] != load_state(db, m):
            raise _Skip(f"meter {m}: its rating state does not follow from the journal")
    if check.year != load_year(db, account):
        raise _Skip("the tier total does not follow from the journal")


def _account(
    db: Database,
    account: str,
    ms: list[str],
    window: Window,
    anchors: Mapping[str, Reading],
    meters: Mapping[str, Billing],
    old: TariffBook,
    new: TariffBook,
    calendar: BillingYear,
    engine: ModuleType | None,
    settled: int,
) -> _Account:
    """The account re-rated over ``window`` (or _Skip)."""
    year = load_year(db, account)
    moving = {r.meter for _, r in window}
    bases: dict[str, RatingRow | None] = {}
    for m in ms:
        anchor = anchors.get(m)
        if m not in moving:  # nothing read since its anchor: its state as it is
            bases[m] = load_state(db, m)
        elif anchor is None:
            bases[m] = None
        else:  # the state the anchor left (its time, energy and registers)
            bases[m] = rate_reading(None, anchor, meters[m], old, AccountYear(), calendar).state
    times = [anchors[m].ts_ms for m in moving if m in anchors] + [r.ts_ms for _, r in window]
    if times and year.year_end is not None and calendar.end_of(when(min(times))) != year.year_end:
        raise _Skip("the window crosses the yearly tier reset")
    # 1. the window's energy (independent of the start): wind the tier total back
    probe = _replay(bases, year, window, meters, old, calendar, engine)
    start_year = replace(year, year_wh=year.year_wh - (probe.year.year_wh - year.year_wh))
    if start_year.year_wh < 0:
        raise _Skip("the tier total does not cover the window's energy")
    # 2. each accumulator wound back by the window's energy on it
    lines = _replay(bases, start_year, window, meters, old, calendar, engine).lines
    start = dict(bases)
    for m in sorted(moving):
        base = bases[m]
        if base is None:
            continue
        now = load_state(db, m)
        if now is None:
            raise _Skip(f"meter {m} has no rating state")
        totals = _wound_back(now.totals, lines, m, engine)
        if totals is None:
            raise _Skip(f"meter {m}: its accumulators do not cover the journal's energy")
        start[m] = replace(base, totals=totals)
    # 3. the old book must reproduce the ledger and the stored states exactly
    check = _replay(start, start_year, window, meters, old, calendar, engine)
    _verify(db, account, ms, check, settled)
    # 4. the new book from the same start
    final = _replay(start, start_year, window, meters, new, calendar, engine)
    charged = sum(check.amounts.values())
    return _Account(
        check, final, sum(final.amounts.values()), charged, len(window), frozenset(moving)
    )


def _wound_back(
    totals: Mapping[SegmentKey, Running],
    lines: Mapping[tuple[str, int], Iterable[ChargeLine]],
    meter: str,
    engine: ModuleType | None,
) -> dict[SegmentKey, Running] | None:
    """``totals`` less the window's energy of ``meter`` on each accumulator, whose posted
    amount is then what the rounding rule posts for that energy (an accumulator always
    holds ``cumulative_cost(energy, price)``); None when the energy goes negative."""
    cost = (engine or fastpath).cumulative_cost
    energy = {seg: run.energy_wh for seg, run in totals.items()}
    prices: dict[SegmentKey, int] = {}
    for (m, _), items in lines.items():
        if m != meter:
            continue
        for line in items:
            seg: SegmentKey = (line.tariff_id, line.version, line.key)
            energy[seg] = energy.get(seg, 0) - line.energy_wh
            prices[seg] = line.price
    out: dict[SegmentKey, Running] = {}
    for seg, wh in energy.items():
        if wh < 0:
            return None
        if seg not in prices:
            out[seg] = totals[seg]
        elif wh > 0:
            out[seg] = Running(wh, cost(wh, prices[seg]))
    return out
