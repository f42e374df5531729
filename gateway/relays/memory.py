"""What the relays remember across restarts (store migration 6), as functions that run
inside a store-writer transaction: an account's protect mode once a command set it, each
meter's relay position last commanded (and whether the meter confirmed it), the time
a trip storm stopped tripping (``meta`` key ``relays_storm_ms``), and safe mode: when it
was entered and why (``meta`` keys ``relays_safe_mode_ms``, ``relays_safe_mode_reason``;
the store is healthy after a damaged one was replaced, so a restart must find it)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_utils import Database

__all__ = [
    "Position",
    "Remembered",
    "SafeMode",
    "load",
    "save_position",
    "save_protect",
    "save_safe_mode",
    "save_storm",
]

_STORM_KEY = "relays_storm_ms"
_SAFE_KEY = "relays_safe_mode_ms"
_SAFE_REASON_KEY = "relays_safe_mode_reason"


@dataclass(frozen=True, slots=True)
class Position:
    """A meter's relay as last commanded: ``open`` (tripped) or not, confirmed or not."""

    account: str | None
    open: bool
    confirmed: bool
    balance: int | None
    ts_ms: int


@dataclass(frozen=True, slots=True)
class SafeMode:
    """Safe mode: no trips since ``since_ms`` (calendar ms) for ``reason``."""

    since_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class Remembered:
    protect: dict[str, bool]
    positions: dict[str, Position]
    storm_ms: int | None
    safe_mode: SafeMode | None = None


def load(db: Database) -> Remembered:
    protect = {str(a): bool(p) for a, p in db.execute("SELECT account, protect FROM relay_protect")}
    positions = {
        str(m): Position(a, pos == "open", bool(c), b, int(ts))
        for m, a, pos, c, b, ts in db.execute(
            "SELECT meter, account, position, confirmed, balance, ts_ms FROM relay_state"
        )
    }
    meta = dict(
        db.execute(
            "SELECT key, value FROM meta WHERE key IN (?, ?, ?)",
            (_STORM_KEY, _SAFE_KEY, _SAFE_REASON_KEY),
        ).fetchall()
    )
    storm = meta.get(_STORM_KEY)
    safe = meta.get(_SAFE_KEY)
    safe_mode = None if safe is None else SafeMode(int(safe), str(meta.get(_SAFE_REASON_KEY, "")))
    return Remembered(protect, positions, None if storm is None else int(storm), safe_mode)


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


def save_safe_mode(db: Database, safe_mode: SafeMode | None) -> None:
    """Remember safe mode (None: it ended)."""
    if safe_mode is None:
        db.execute("DELETE FROM meta WHERE key IN (?, ?)", (_SAFE_KEY, _SAFE_REASON_KEY))
        return
    for key, value in ((_SAFE_KEY, safe_mode.since_ms), (_SAFE_REASON_KEY, safe_mode.reason)):
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
