"""The command replay table (store migration 5): one row per command id, durable."""

from __future__ import annotations

import sqlite3

import pytest
from sqlite_utils import Database

from gateway.store.migrations import JOURNAL

T0 = 1_717_200_000_000


def test_migration_5_keeps_one_reply_per_command_id() -> None:
    db = Database(memory=True)
    JOURNAL.apply(db, T0)
    row = (b"\x01" * 16, 1, T0, T0 + 300_000, T0 + 1, T0 + 86_700_000, 0, b"\xa0")
    db.execute("INSERT INTO commands VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO commands VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
    assert db.execute("SELECT id, reply FROM commands").fetchall() == [(row[0], row[7])]
