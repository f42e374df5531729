"""Meter lifecycle (gateway.lifecycle): removal, replacement, CT change, dead meters, a
meter number changed without a work order; the meter records of store migration 7."""

from __future__ import annotations

import sqlite3

import pytest
from sqlite_utils import Database

from gateway.errors import StoreError
from gateway.store.meters import MeterRecord, chargeable, meter_records, record_of, set_record
from gateway.store.migrations import JOURNAL

T0 = 1_717_200_000_000


def test_migration_7_meter_records_and_settlements() -> None:
    db = Database(memory=True)
    JOURNAL.apply(db, T0)
    assert chargeable(db, "m1") and record_of(db, "m1") is None
    set_record(db, MeterRecord("m1", "A", "held", 60, T0, reason="number changed"))
    assert not chargeable(db, "m1")
    set_record(db, MeterRecord("m1", "A", "active", 60, T0 + 1))
    assert chargeable(db, "m1")
    assert meter_records(db) == [MeterRecord("m1", "A", "active", 60, T0 + 1)]
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO meter_records (meter, status, since_ms) VALUES ('x', 'gone', 0)")
    with pytest.raises(StoreError):
        set_record(db, MeterRecord("m2", "A", "active", 0, T0))
    row = ("monthly", "2026-12", "A", T0, T0, 0, 0, b"\xa0")
    sql = (
        "INSERT INTO settlements (kind, period, account, at_ms, taken_ms, balance, ledger_id,"
        " meters) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    db.execute(sql, row)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(sql, row)
