"""What the relays remember across restarts (store migration 6), as functions that run
inside a store-writer transaction: an account's protect mode once a command set it, each
meter's relay position last commanded (and whether the meter confirmed it), and the time
a trip storm stopped tripping (``meta`` key ``relays_storm_ms``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_utils import Database

__all__ = ["Position", "Remembered", "load", "save_position", "save_protect", "save_storm"]

_STORM_KEY = "relays_storm_ms"


@dataclass(frozen=True, slots=True)
class Position:
    """A meter's relay as last commanded: ``open`` (tripped) or not, confirmed or not."""

    account: str | None
    open: bool
    confirmed: bool
    balance: int | None
    ts_ms: int


@dataclass(frozen=True, slots=True)
class Remembered:
    protect: dict[str, bool]
    positions: dict[str, Position]
    storm_ms: int | None


def load(db: Database) -> Remembered:
    protect = {str(a): bool(p) for a, p in db.execute("SELECT account, protect FROM relay_protect")}
    positions = {
        str(m): Position(a, pos == "open", bool(c), b, int(ts))
        for m, a, pos, c, b, ts in db.execute(
            "SELECT meter, account, position, confirmed, balance, ts_ms FROM relay_state"
        )
    }
    row = db.execute("SELECT value FROM meta WHERE key = ?", (_STORM_KEY,)).fetchone()
    return Remembered(protect, positions, None if row is None else int(row[0]))


def save_protect(db: Database, account: str, on: bool, ts_ms: int) -> None:
    db.execute(
        "INSERT INTO relay_protect (account, protect, ts_ms) VALUES (?, ?, ?)"
        " ON CONFLICT (account) DO UPDATE SET protect = excluded.protect, ts_ms = excluded.ts_ms",
        (account, int(on), ts_ms),
    )


def save_position(db: Database, meter: str, position: Position) -> None:
    db.execute(
        "INSERT INTO relay_state (meter, account, position, confirmed, balance, ts_ms)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (meter) DO UPDATE SET account = excluded.account,"
        " position = excluded.position, confirmed = excluded.confirmed,"
        " balance = excluded.balance, ts_ms = excluded.ts_ms",
        (
            meter,
            position.account,
            "open" if position.open else "closed",
            int(position.confirmed),
            position.balance,
            position.ts_ms,
        ),
    )


def save_storm(db: Database, stopped_ms: int | None) -> None:
    if stopped_ms is None:
        db.execute("DELETE FROM meta WHERE key = ?", (_STORM_KEY,))
    else:
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_STORM_KEY, stopped_ms),
        )
