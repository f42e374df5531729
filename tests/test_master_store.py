"""The master's central store: each batch once by (gateway, epoch, seq), the highest
contiguous sequence and the missing ones, every record kind stored as sent."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import StoreCorrupt, StoreError
from gateway.master.store import MAX_MISSING, MasterStore
from gateway.protocols.batch import (
    Ack,
    Batch,
    HealthRecord,
    LedgerEntry,
    MeterEvent,
    TaskKind,
    TaskResult,
    TaskStatus,
    decode_batch,
    encode_batch,
)
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import Store


def now() -> int:
    return 1_795_000_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MasterStore]:
    with MasterStore.open(tmp_path / "master.db", now_ms=now) as opened:
        yield opened


def batch(seq: int, *, epoch: int = 7, gateway: str = "gw-01", n: int = 3) -> Batch:
    return Batch(
        gateway,
        epoch,
        seq,
        tuple(
            Reading(f"m{i}", 1_795_000_000_000 + seq * 1000 + i, {Quantity(1): seq * 10 + i})
            for i in range(n)
        ),
    )


def put(store: MasterStore, b: Batch) -> tuple[bool, Ack]:
    stored = store.store_batch(b, received_ms=now(), size=100)
    return stored.new, stored.ack


def test_duplicate_batch_is_stored_once(store: MasterStore) -> None:
    assert put(store, batch(1)) == (True, Ack(7, 1))
    assert put(store, batch(1)) == (False, Ack(7, 1))
    assert store.readings("gw-01") == list(batch(1).readings)
    (summary,) = store.summary()
    assert (summary.batches, summary.readings, summary.epochs) == (1, 3, 1)


def test_gap_keeps_the_ack_at_the_contiguous_seq_and_lists_the_missing(
    store: MasterStore,
) -> None:
    assert put(store, batch(1))[1] == Ack(7, 1)
    assert put(store, batch(2))[1] == Ack(7, 2)
    assert put(store, batch(5))[1] == Ack(7, 2, (3, 4))
    assert put(store, batch(7))[1] == Ack(7, 2, (3, 4, 6))
    assert put(store, batch(4))[1] == Ack(7, 2, (3, 6))
    # the gap filled: the ack runs on over everything stored after it
    assert put(store, batch(3))[1] == Ack(7, 5, (6,))
    assert put(store, batch(6))[1] == Ack(7, 7)
    assert store.ack_for("gw-01", 7) == Ack(7, 7)
    assert [r.ts_ms % 100_000 // 1000 for r in store.readings("gw-01")[::3]] == list(range(1, 8))


def test_missing_list_is_capped_at_the_lowest(store: MasterStore) -> None:
    put(store, batch(1))
    ack = put(store, batch(MAX_MISSING + 100))[1]
    assert ack == Ack(7, 1, tuple(range(2, 2 + MAX_MISSING)))


def test_new_epoch_is_stored_not_discarded(store: MasterStore) -> None:
    put(store, batch(1, epoch=7))
    put(store, batch(2, epoch=7))
    # the gateway's store recreated: a new epoch starts again at seq 1
    assert put(store, batch(1, epoch=99, n=2)) == (True, Ack(99, 1))
    assert store.ack_for("gw-01", 7) == Ack(7, 2)
    assert store.latest_ack("gw-01") == Ack(99, 1)
    (summary,) = store.summary()
    assert (summary.batches, summary.readings, summary.epochs) == (3, 8, 2)


def test_gateways_are_kept_apart(store: MasterStore) -> None:
    put(store, batch(1, gateway="a"))
    assert put(store, batch(1, gateway="b")) == (True, Ack(7, 1))
    assert [s.gateway_id for s in store.summary()] == ["a", "b"]
    assert store.ack_for("c", 7) == Ack(7, 0)
    assert store.latest_ack("c") is None


def test_status_and_rejects_are_recorded(store: MasterStore) -> None:
    store.set_status("gw-01", "online", 5)
    store.reject("gw/x/up/batch", "not CBOR", received_ms=6, size=4)
    (summary,) = store.summary()
    assert (summary.status, summary.status_ms, summary.batches) == ("online", 5, 0)
    assert store.rejected() == [("gw/x/up/batch", "not CBOR")]


def test_every_record_kind_comes_back_as_sent(store: MasterStore) -> None:
    full = Batch(
        "gw-01",
        3,
        1,
        readings=(Reading("m1", 10, {Quantity(1): 5, Quantity(10): -7}, flags=1),),
        events=(MeterEvent("m1", 11, 3, {1: "x", "why": 2}), MeterEvent("m2", 12, 4)),
        ledger=(LedgerEntry(9, "A-101", 13, 2, -1_2345, 98_7655, "T-1", 4),),
        tasks=(
            TaskResult("m2", TaskKind.DAILY_FREEZE, date(2026, 12, 31), TaskStatus.OK, 14),
            TaskResult(
                "m1", TaskKind.CURVE, date(2027, 1, 1), TaskStatus.FAILED, None, {Quantity(1): 3}
            ),
        ),
        health=(HealthRecord(15, 5, {"state": "up", "n": 3}),),
    )
    put(store, full)
    assert store.readings("gw-01") == list(full.readings)
    assert store.events("gw-01") == list(full.events)
    assert store.ledger("gw-01") == list(full.ledger)
    assert store.tasks("gw-01") == list(full.tasks)
    assert store.health("gw-01") == list(full.health)


readings = st.lists(
    st.builds(
        Reading,
        meter=st.sampled_from(["240000000017", "240000000034", "m"]),
        ts_ms=st.integers(0, 2**62),
        values=st.dictionaries(
            st.sampled_from([Quantity(1), Quantity(10), Quantity(11)]),
            st.integers(-(2**63), 2**63 - 1),
        ),
        flags=st.integers(0, 31),
    ),
    max_size=20,
)


@settings(max_examples=40, deadline=None)
@given(st.lists(readings, min_size=1, max_size=4))
def test_stored_readings_equal_the_decoded_batches(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[list[Reading]]
) -> None:
    path = tmp_path_factory.mktemp("m") / "master.db"
    with MasterStore.open(path, now_ms=now) as store:
        for seq, chunk in enumerate(chunks, start=1):
            wire = decode_batch(encode_batch(Batch("g", 1, seq, tuple(chunk))))
            put(store, wire)
            put(store, wire)  # and again: nothing more
        assert store.readings("g") == [r for chunk in chunks for r in chunk]
        assert store.integrity() is None


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "master.db"
    with MasterStore.open(path, now_ms=now) as store:
        put(store, batch(1))
        put(store, batch(3))
    with MasterStore.open(path, now_ms=now) as store:
        assert put(store, batch(1)) == (False, Ack(7, 1, (2,)))
        assert put(store, batch(2)) == (True, Ack(7, 3))
    with MasterStore.open(path, now_ms=now, readonly=True) as reader:
        assert reader.summary()[0].batches == 3


def test_a_gateway_store_is_not_a_master_store(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    with Store.open(path, gateway_id="gw-01", now_ms=now):
        pass
    with pytest.raises(StoreError, match="not a master store"):
        MasterStore.open(path, now_ms=now)


def test_readonly_open_of_a_missing_store_fails_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        MasterStore.open(tmp_path / "none.db", now_ms=now, readonly=True)
    assert not (tmp_path / "none.db").exists()


def test_a_damaged_store_is_refused_not_moved(tmp_path: Path) -> None:
    path = tmp_path / "master.db"
    with MasterStore.open(path, now_ms=now) as store:
        for seq in range(1, 40):
            put(store, batch(seq, n=20))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    for offset in range(3 * 1024, len(data), 1024):  # scribble over every page but the first
        data[offset + 8 : offset + 40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        MasterStore.open(path, now_ms=now)
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))
