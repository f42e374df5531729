"""The outbox: batches built from the journal with fixed content, acknowledged by seq,
the journal's acknowledged marks raised only over acknowledged batches without a hole,
and the backlog left behind by live batches after an outage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.protocols.batch import Batch, HealthKind, HealthRecord, MeterEvent, decode_batch
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import JournalReader, Kind, Store
from gateway.store.outbox import Outbox, OutboxReader

T0 = 1_717_200_000_000


def reading(i: int) -> Reading:
    return Reading(f"m{i % 4}", T0 + i * 1000, {Quantity.ENERGY_IMPORT: 1000 + i})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "gw.db", gateway_id="gw-t", now_ms=lambda: T0, max_delay=0.01)
    yield s
    s.close()


def add(store: Store, start: int, count: int) -> None:
    store.submit_many(reading(i) for i in range(start, start + count))
    assert store.flush(10)


def batches(store: Store) -> dict[int, Batch]:
    with OutboxReader(store.path) as reader:
        return {e.seq: decode_batch(reader.payload(e.seq) or b"") for e in reader.pending()}


def test_live_batches_hold_the_journal_in_order_and_are_fixed(store: Store) -> None:
    add(store, 0, 450)
    store.submit(MeterEvent("m1", T0, 1))
    assert store.flush(10)
    outbox = Outbox(store, batch_size=200, live_threshold=1000)
    built = outbox.build(live=5, partial=False).result(10)
    assert built.live == (1, 2) and built.backlog == ()  # two full batches, no partial
    got = batches(store)
    assert [len(b.readings) for b in got.values()] == [200, 200]
    assert got[1].readings == tuple(reading(i) for i in range(200))
    # the start health record and the event ride in the first batch
    assert [h.kind for h in got[1].health] == [HealthKind.POWER]
    assert got[1].events == (MeterEvent("m1", T0, 1),) and got[2].events == ()
    with OutboxReader(store.path) as reader:
        first = reader.payload(1)
    # later records never change a built batch: a re-send is byte-identical
    add(store, 450, 10)
    assert outbox.build(live=1, partial=True).result(10).live == (3,)
    with OutboxReader(store.path) as reader:
        assert reader.payload(1) == first
        assert [e.seq for e in reader.pending()] == [1, 2, 3]
    assert got[1].epoch == store.meta.epoch and got[1].gateway_id == "gw-t"
    assert batches(store)[3].readings == tuple(reading(i) for i in range(400, 460))
    assert outbox.build(live=1, partial=True).result(10).live == ()  # nothing left


def test_acknowledge_raises_marks_prunes_batches_and_keeps_counting(store: Store) -> None:
    add(store, 0, 500)
    outbox = Outbox(store, batch_size=100, live_threshold=1000)
    assert outbox.build(live=5).result(10).live == (1, 2, 3, 4, 5)
    marks = outbox.acknowledge(store.meta.epoch, 2, {1: 1, 2: 3, 3: 1}).result(10)
    assert marks[Kind.READINGS] == 200
    with JournalReader(store.path) as journal:
        assert journal.acknowledged(Kind.READINGS) == 200
        assert journal.acknowledged(Kind.HEALTH) == 1  # the start record, in batch 1
    with OutboxReader(store.path) as reader:
        pending = reader.pending()
        assert [(e.seq, e.sent_count) for e in pending] == [(3, 1), (4, 0), (5, 0)]
        assert reader.missing([2, 4, 9]) == [4]
    # an acknowledgement of another epoch changes nothing
    assert outbox.acknowledge(store.meta.epoch + 1, 5).result(10)[Kind.READINGS] == 200
    assert outbox.acknowledge(store.meta.epoch, 5).result(10)[Kind.READINGS] == 500
    with OutboxReader(store.path) as reader:
        assert reader.pending() == [] and reader.last_seq() == 5
    add(store, 500, 5)
    assert outbox.build(live=1).result(10).live == (6,)  # numbering goes on


def test_outage_backlog_leaves_a_gap_filled_by_backlog_batches(store: Store) -> None:
    add(store, 0, 1000)
    outbox = Outbox(store, batch_size=100, live_threshold=300)
    built = outbox.build(live=1).result(10)
    got = batches(store)
    # more than live_threshold waiting: the live batch takes the newest 100 readings
    assert got[built.live[0]].readings == tuple(reading(i) for i in range(900, 1000))
    with OutboxReader(store.path) as reader:
        assert reader.backlog() == 900
    drained = outbox.build(live=0, backlog=20).result(10)
    assert len(drained.backlog) == 9
    got = batches(store)
    order = [r for seq in drained.backlog for r in got[seq].readings]
    assert order == [reading(i) for i in range(900)]  # oldest first, none twice
    assert got[drained.backlog[0]].health == ()  # backlog batches carry readings only
    # the mark rises only where acknowledged batches leave no hole
    marks = outbox.acknowledge(store.meta.epoch, 1).result(10)
    assert marks[Kind.READINGS] == 0
    marks = outbox.acknowledge(store.meta.epoch, 10).result(10)
    assert marks[Kind.READINGS] == 1000
    with OutboxReader(store.path) as reader:
        assert reader.pending() == [] and reader.backlog() == 0


def test_a_gap_emptied_by_retention_does_not_block_the_mark(store: Store) -> None:
    add(store, 0, 700)
    outbox = Outbox(store, batch_size=100, live_threshold=300)
    live = outbox.build(live=1).result(10).live
    store.writer.call(lambda db: db.execute("DELETE FROM readings WHERE id <= 600")).result(10)
    assert outbox.build(live=0, backlog=5).result(10).backlog == ()
    marks = outbox.acknowledge(store.meta.epoch, live[-1]).result(10)
    assert marks[Kind.READINGS] == 700


def test_sequence_survives_a_restart_and_a_new_store_starts_at_one(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path, gateway_id="g", max_delay=0.01) as first:
        add(first, 0, 10)
        assert Outbox(first).build().result(10).live == (1,)
        epoch = first.meta.epoch
    with Store.open(path, gateway_id="g", max_delay=0.01) as again:
        add(again, 10, 10)
        assert Outbox(again).build().result(10).live == (2,)
    path.unlink()
    with Store.open(path, gateway_id="g", max_delay=0.01) as fresh:
        add(fresh, 0, 1)
        fresh.submit(HealthRecord(T0, HealthKind.UPLINK, {"event": "x"}))
        assert Outbox(fresh).build().result(10).live == (1,)
        assert fresh.meta.epoch != epoch
