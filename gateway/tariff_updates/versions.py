"""Tariff versions as command arguments, checked by the configuration's own rules, and
kept in the store (table ``tariff_versions``, migration 9).

The wire form of one version (integers and text only; a TARIFF command's arguments)::

    id: "res"            version: 2           effective: 1795000000000   (UTC ms)
    kind: "flat"         price: 6000                                     (0.0001 yuan/kWh)
    kind: "tou"          slots: {"00:00": 4, "08:00": 2, "22:00": 4}     ("HH:MM" -> slot 1..4)
                         prices: {2: 9000, 4: 3000}                      (slot -> price)
    kind: "tiered"       thresholds: [2760000, 4800000]                  (Wh in the billing year)
                         prices: [5283, 5783, 8283]                      (one per tier)

:func:`tariff_from_args` turns it into the configuration's dataclass by handing it to
:func:`gateway.config.sections.read_tariff` (so a command and a YAML file are checked
by the same code, with the same messages), then :class:`~gateway.billing.TariffBook`'s
own check.  The book a gateway rates with is the configuration's versions and the
stored ones (:func:`book_with`); a stored version whose (id, version) the configuration
also names is left out (the file wins; logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
import yaml
from sqlite_utils import Database

from gateway.billing import TariffBook
from gateway.config.model import FlatTariff, GatewayConfig, Tariff, TieredTariff, TouTariff
from gateway.config.sections import read_tariff
from gateway.errors import ConfigError, StoreError
from gateway.protocols.command import ArgValue
from gateway.yamlloc import Reader

__all__ = [
    "StoredVersion",
    "book_with",
    "in_force",
    "ms_of",
    "refuse_kept",
    "rerated_upto",
    "store_version",
    "stored_versions",
    "tariff_args",
    "tariff_from_args",
]

_log = logging.getLogger("gateway.tariffs")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_WHAT = "tariff arguments"


def ms_of(instant: datetime) -> int:
    """UTC milliseconds of an aware datetime."""
    return (instant - _EPOCH) // timedelta(milliseconds=1)


def _utc(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def tariff_from_args(args: Mapping[str, ArgValue]) -> Tariff:
    """The tariff version the wire form ``args`` describes.

    ConfigError (``message``: every problem, ``; ``-separated) when it is not one the
    configuration would accept.
    """
    doc: dict[str, Any] = dict(args)
    problems: list[str] = []
    effective = doc.get("effective")
    if "effective" in doc:
        if type(effective) is not int:
            problems.append(f"effective: must be UTC milliseconds (an integer), not {effective!r}")
        else:
            doc["effective"] = _utc(effective).isoformat(timespec="milliseconds")
    slots = doc.get("slots")
    if "slots" in doc and doc.get("kind") == "tou":
        if not isinstance(slots, dict) or not all(isinstance(k, str) for k in slots):
            problems.append('slots: must be a map "HH:MM" -> slot number (1 to 4)')
        else:
            doc["slots"] = [{"start": k, "slot": slots[k]} for k in sorted(slots)]
    if problems:
        raise ConfigError("; ".join(problems), file=_WHAT)
    try:
        text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not a tariff version: {exc}", file=_WHAT) from exc
    r = Reader(_WHAT)
    node = r.compose(text)
    tariff = read_tariff(r, node)[0] if node is not None else None
    if r.errors or tariff is None:
        text = "; ".join(e.message for e in r.errors) or "not a tariff version"
        raise ConfigError(text, file=_WHAT)
    assert isinstance(tariff, FlatTariff | TouTariff | TieredTariff)
    try:
        TariffBook([tariff])  # the book's own checks (a price for every slot ...)
    except ValueError as exc:
        raise ConfigError(str(exc), file=_WHAT) from exc
    return tariff


def tariff_args(tariff: Tariff) -> dict[str, ArgValue]:
    """The wire form of ``tariff`` (:func:`tariff_from_args` gives it back)."""
    out: dict[str, ArgValue] = {
        "id": tariff.id,
        "version": tariff.version,
        "effective": ms_of(tariff.effective),
        "kind": tariff.kind,
    }
    if isinstance(tariff, FlatTariff):
        out["price"] = tariff.price
    elif isinstance(tariff, TouTariff):
        out["slots"] = {f"{s.start:%H:%M}": s.slot for s in tariff.slots}
        out["prices"] = {int(k): v for k, v in sorted(tariff.prices.items())}
    else:
        out["thresholds"] = list(tariff.thresholds)
        out["prices"] = list(tariff.prices)
    return out


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One row of ``tariff_versions``."""

    tariff: Tariff
    received_ms: int
    adjustments: Mapping[str, int]  #: account -> ledger entry id of its adjustment
    #: a late version: the journal's last reading position its re-rating covered (0: none)
    position: int = 0
    rerated: frozenset[str] = frozenset()  #: accounts re-rated (with an adjustment or not)


def refuse_kept(db: Database, tariff: Tariff) -> None:
    """StoreError if (``tariff.id``, ``tariff.version``) is kept already."""
    kept = db.execute(
        "SELECT 1 FROM tariff_versions WHERE tariff = ? AND version = ?",
        (tariff.id, tariff.version),
    ).fetchone()
    if kept is not None:
        raise StoreError(f"tariff {tariff.id} v{tariff.version} is already kept")


def store_version(
    db: Database,
    tariff: Tariff,
    received_ms: int,
    adjustments: Mapping[str, int],
    *,
    position: int = 0,
    rerated: Iterable[str] = (),
) -> None:
    """Keep ``tariff`` in the caller's transaction; StoreError if its (id, version) is
    already kept (the caller's transaction rolls back: nothing posted).  The ``adjustments``
    column holds what its re-rating did: CBOR ``{"entries": {account: entry id},
    "position": last reading position re-rated, "rerated": [account ...]}``."""
    done = {"entries": dict(adjustments), "position": position, "rerated": sorted(rerated)}
    refuse_kept(db, tariff)
    db.execute(
        "INSERT INTO tariff_versions (tariff, version, effective_ms, kind, args, received_ms,"
        " adjustments) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            tariff.id,
            tariff.version,
            ms_of(tariff.effective),
            tariff.kind,
            cbor2.dumps(tariff_args(tariff), canonical=True),
            received_ms,
            cbor2.dumps(done, canonical=True),
        ),
    )


def stored_versions(db: Database, tariff_id: str | None = None) -> list[StoredVersion]:
    """Every kept version (of ``tariff_id``), in the order received; one that no longer
    passes the checks is left out (logged)."""
    out: list[StoredVersion] = []
    where, params = ("WHERE tariff = ?", (tariff_id,)) if tariff_id is not None else ("", ())
    rows = db.execute(
        "SELECT tariff, version, args, received_ms, adjustments FROM tariff_versions"
        f" {where} ORDER BY received_ms, tariff, version",
        params,
    ).fetchall()
    for ident, version, blob, received, adjustments in rows:
        try:
            tariff = tariff_from_args(cbor2.loads(bytes(blob)))
        except (ConfigError, ValueError) as exc:
            _log.error("tariff %s v%s in the store is not valid, not used: %s", ident, version, exc)
            continue
        done = cbor2.loads(bytes(adjustments))
        entries = {str(k): int(v) for k, v in done.get("entries", {}).items()}
        rerated = frozenset(str(a) for a in done.get("rerated", ()))
        out.append(
            StoredVersion(tariff, int(received), entries, int(done.get("position", 0)), rerated)
        )
    return out


def rerated_upto(db: Database, tariff_id: str) -> dict[str, int]:
    """Per account re-rated by an earlier late version of ``tariff_id``: the last reading
    position that re-rating covered (its charges were corrected by it)."""
    out: dict[str, int] = {}
    for v in stored_versions(db, tariff_id):
        if v.position:
            for account in v.rerated:
                out[account] = max(out.get(account, 0), v.position)
    return out


def book_with(config: GatewayConfig, stored: Iterable[Tariff]) -> TariffBook:
    """The configuration's book (:meth:`TariffBook.from_config`) and the ``stored``
    versions; one whose (id, version) the configuration has is left out."""
    book = TariffBook.from_config(config)
    known = {(t.id, t.version) for t in config.tariffs}
    extra: list[Tariff] = []
    for tariff in stored:
        if (tariff.id, tariff.version) in known:
            _log.warning(
                "tariff %s v%d is both configured and stored: the configuration's is used",
                tariff.id,
                tariff.version,
            )
            continue
        extra.append(tariff)
    if not extra:
        return book
    return TariffBook([*config.tariffs, *extra], calendar=book.calendar, seasons=book.seasons)


def in_force(book: TariffBook, ids: Iterable[str], now: datetime) -> dict[str | int, ArgValue]:
    """Per tariff id: the version in force at ``now`` (and when it took effect), and the
    next one when one is announced -- what ``gateway status`` and a TARIFF reply show."""
    out: dict[str | int, ArgValue] = {}
    for ident in sorted(set(ids)):
        versions = book.versions(ident)
        entry: dict[str | int, ArgValue] = {}
        try:
            current = book.at(ident, now)
            entry["version"] = current.version
            entry["kind"] = current.kind
            entry["effective"] = ms_of(current.effective)
        except KeyError:
            entry["version"] = None
        later = [t for t in versions if t.effective > now]
        if later:
            entry["next"] = {"version": later[0].version, "effective": ms_of(later[0].effective)}
        out[ident] = entry
    return out
