"""The relays' memory (store migration 6): protect mode per account, relay position per meter."""

from __future__ import annotations

import sqlite3

import pytest
from sqlite_utils import Database

from gateway.store.migrations import JOURNAL

T0 = 1_717_200_000_000


def test_migration_6_keeps_one_row_per_account_and_meter() -> None:
    db = Database(memory=True)
    JOURNAL.apply(db, T0)
    db.execute("INSERT INTO relay_protect VALUES ('A', 1, ?)", (T0,))
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO relay_protect VALUES ('A', 0, ?)", (T0,))
    db.execute("INSERT INTO relay_state VALUES ('m1', 'A', 'open', 1, -5, ?)", (T0,))
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO relay_state VALUES ('m2', 'A', 'ajar', 1, 0, ?)", (T0,))
    assert db.execute("SELECT meter, position FROM relay_state").fetchall() == [("m1", "open")]
