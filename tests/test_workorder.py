"""A swap done with a work order (domain.md, "Meter lifecycle, the hard cases"): a
replacement or addition may record the new meter's nameplate number (store migration
11); the poller's METER_NUMBER_CHANGED to that number is journaled as the work order's,
not held, and the poller stops showing the meter ``swapped``.  A different number is
held as before."""

from __future__ import annotations

import pytest
from sqlite_utils import Database

from gateway.errors import StoreError
from gateway.store.meters import (
    MeterRecord,
    expects_number,
    is_meter_number,
    meter_records,
    record_of,
    set_record,
)
from gateway.store.migrations import JOURNAL

T0 = 1_717_200_000_000
NUMBER = "990000000001"


def test_migration_11_records_a_meter_number() -> None:
    db = Database(memory=True)
    JOURNAL.apply(db, T0)
    set_record(db, MeterRecord("m1", "A", "active", 1, T0, meter_number=NUMBER))
    set_record(db, MeterRecord("m2", "A", "active", 1, T0))
    assert [r.meter_number for r in meter_records(db)] == [NUMBER, None]
    assert expects_number(record_of(db, "m1"), NUMBER)
    assert not expects_number(record_of(db, "m1"), "990000000002")
    assert not expects_number(record_of(db, "m2"), NUMBER)
    held = MeterRecord("m1", "A", "held", 1, T0, meter_number=NUMBER)
    assert not expects_number(held, NUMBER) and not expects_number(None, NUMBER)
    for bad in ("99000000001", "9900000000011", "99000000000x", "９９0000000001"):
        assert not is_meter_number(bad)
        with pytest.raises(StoreError, match="12 digits"):
            set_record(db, MeterRecord("m3", "A", "active", 1, T0, meter_number=bad))
    assert record_of(db, "m3") is None
