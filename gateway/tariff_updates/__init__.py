"""Tariff versions from the master (the TARIFF command): checked, kept, put in force, and
when late, re-rated from the journal with one adjustment (退补) per account.

- :mod:`~gateway.tariff_updates.versions`: the wire form of a version, checked by the
  configuration's rules; the store table ``tariff_versions``; the book (configuration +
  stored) and the versions in force.
- :mod:`~gateway.tariff_updates.rerating`: the late re-rating, in one transaction.

:func:`add_version` does it all through :meth:`Charger.add_tariff
<gateway.charging.Charger.add_tariff>`: in one durable transaction with charging paused
(the queued readings written first) the version is stored and, when its effective time
is past, the consumption since then re-rated and the adjustments posted; the charger's
cache is reloaded and its book replaced before any reading is rated again.  Given the
store's path, the bulk of a late re-rating is worked out before, on a snapshot, while
charging goes on (:func:`~gateway.tariff_updates.rerating.plan_late`): the bus threads
wait only for the readings of the last moments.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlite_utils import Database

from gateway.billing import TariffBook
from gateway.charging import Charger
from gateway.config.model import GatewayConfig, Tariff
from gateway.protocols.command import ArgValue
from gateway.store.db import connect
from gateway.store.writer import StoreWriter
from gateway.tariff_updates.rerating import (
    LatePlan,
    LateRerating,
    adjustment_reference,
    finish_late,
    plan_late,
    rerate_late,
)
from gateway.tariff_updates.versions import (
    StoredVersion,
    book_with,
    in_force,
    ms_of,
    refuse_kept,
    store_version,
    stored_versions,
    tariff_args,
    tariff_from_args,
)

__all__ = [
    "Added",
    "LatePlan",
    "LateRerating",
    "StoredVersion",
    "add_version",
    "adjustment_reference",
    "book_with",
    "finish_late",
    "in_force",
    "late_reason",
    "load_book",
    "ms_of",
    "newer_refusal",
    "plan_late",
    "rerate_late",
    "status",
    "store_version",
    "stored_versions",
    "tariff_args",
    "tariff_from_args",
]

_log = logging.getLogger("gateway.tariffs")


@dataclass(frozen=True, slots=True)
class Added:
    """A version stored and in force; ``rerating`` when it was late."""

    tariff: Tariff
    late: bool
    rerating: LateRerating | None = None
    balances: dict[str, int] = field(default_factory=dict)  #: account -> balance after


def load_book(writer: StoreWriter, config: GatewayConfig, timeout: float = 60.0) -> TariffBook:
    """The book to rate with at start: the configuration's versions and the stored ones."""
    stored = writer.call(stored_versions).result(timeout)
    return book_with(config, [s.tariff for s in stored])


def late_reason(tariff: Tariff, config: GatewayConfig) -> str:
    local = tariff.effective.astimezone(config.tz).isoformat(timespec="minutes")
    return f"tariff {tariff.id} v{tariff.version} effective {local} applied late"


def newer_refusal(charger: Charger, tariff: Tariff) -> str | None:
    """Why ``tariff`` is not newer than the book's versions of its id (None: it is)."""
    versions = charger.book.versions(tariff.id)
    if not versions:
        return None
    top = max(versions, key=lambda t: t.version)
    if tariff.version <= top.version:
        return f"tariff {tariff.id} has version {top.version}: v{tariff.version} is not newer"
    last = max(t.effective for t in versions)
    if tariff.effective <= last:
        return (
            f"tariff {tariff.id} v{tariff.version} must take effect after "
            f"{last.astimezone(UTC).isoformat()} (its latest version's time)"
        )
    return None


def add_version(
    charger: Charger,
    tariff: Tariff,
    now_ms: int,
    *,
    store_path: str | Path | None = None,
    timeout: float = 120.0,
) -> Future[Added]:
    """Store ``tariff`` and put it in force; re-rate if late (see the module docstring).

    With ``store_path`` a late version's re-rating is worked out first on a read
    connection of its own (charging goes on meanwhile, with the old book), and only the
    readings journaled since are re-rated with charging paused.  ValueError when the
    book refuses the version (checked first, nothing done)."""
    old = charger.book
    new = old.with_tariff(tariff)
    late = ms_of(tariff.effective) < now_ms
    reason = late_reason(tariff, charger.config)
    calendar, engine = charger.calendar, charger.engine
    plan: LatePlan | None = None
    if late and store_path is not None:
        try:
            db = connect(Path(store_path), readonly=True)
            try:
                plan = plan_late(db, tariff, old, new, charger.billing, calendar, engine=engine)
            finally:
                db.conn.close()
        except sqlite3.Error as exc:  # then all of it with charging paused
            _log.warning(
                "tariff %s v%d: no snapshot to plan on (%s)", tariff.id, tariff.version, exc
            )

    def run(db: Database) -> Added:
        refuse_kept(db, tariff)  # before any work
        rerating = None
        if late:
            billing = charger.billing  # the charger's thread holds its lock: no reload now
            done = plan or plan_late(db, tariff, old, new, billing, calendar, engine=engine)
            rerating = finish_late(
                db,
                done,
                old,
                new,
                billing,
                calendar,
                ts_ms=now_ms,
                reason=reason,
                engine=engine,
            )
        entries = {a: e.entry_id for a, e in rerating.entries.items()} if rerating else {}
        if rerating is None:
            store_version(db, tariff, now_ms, entries)
        else:
            rerated, position = rerating.rerated, rerating.position
            store_version(db, tariff, now_ms, entries, position=position, rerated=rerated)
        balances = {a: e.balance_after for a, e in rerating.entries.items()} if rerating else {}
        return Added(tariff, late, rerating, balances)

    out = charger.add_tariff(new, run, timeout=timeout)
    out.add_done_callback(_logged)
    return out


def _logged(done: Future[Added]) -> None:
    exc = done.exception()
    if exc is not None:
        _log.error("tariff version not stored: %s", exc)
        return
    added = done.result()
    t, r = added.tariff, added.rerating
    _log.info(
        "tariff %s v%d (effective %s) in force%s",
        t.id,
        t.version,
        t.effective.astimezone(UTC).isoformat(),
        ""
        if r is None
        else f"; late: {r.readings} readings re-rated, {len(r.adjustments)} adjustments,"
        f" {len(r.skipped)} accounts not re-rated",
    )


def status(charger: Charger | None, now: Callable[[], datetime]) -> dict[str | int, ArgValue]:
    """``gateway status``'s ``tariffs``: per tariff id the charger applies, the version in
    force (and the next one announced)."""
    if charger is None:
        return {}
    config = charger.config
    ids = {t.id for t in config.tariffs} | {b.tariff for b in charger.billing.values()}
    return in_force(charger.book, ids, now())
