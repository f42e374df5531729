"""The store writer's storage health record: written at start and then every
``storage_interval``, with the bytes in use, the file bytes and the readings that
await acknowledgement, journalled as health and carried by the outbox's batches."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gateway.protocols.batch import HealthKind, HealthRecord, decode_batch
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import Kind, Store
from gateway.store.db import used_bytes
from gateway.store.outbox import Outbox, OutboxReader

T0 = 1_717_200_000_000


def reading(i: int) -> Reading:
    return Reading(f"m{i % 4}", T0 + i * 1000, {Quantity.ENERGY_IMPORT: 1000 + i})


def storage(store: Store) -> list[HealthRecord]:
    with store.reader() as reader:
        return [h for _, h in reader.health() if h.kind == HealthKind.STORAGE]


def test_written_at_start_with_the_stores_use_and_reaches_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with Store.open(path, gateway_id="gw", now_ms=lambda: T0) as first:
        first.submit_many(reading(i) for i in range(300))
        assert first.flush(10)
        first.mark_acknowledged(Kind.READINGS, 120).result(10)
        assert storage(first) == []  # off unless asked for
    files = sum(os.stat(f"{path}{s}").st_size for s in ("", "-wal") if Path(f"{path}{s}").exists())
    with Store.open(path, gateway_id="gw", now_ms=lambda: T0 + 5, storage_interval=3600) as store:
        assert store.flush(10)  # the record is written before anything queued after the open
        [record] = storage(store)
        assert store.stats().storage_records == 1
        used = store.writer.call(used_bytes).result(10)
        values = record.values
        assert record.ts_ms == T0 + 5
        assert values["event"] == "usage"
        assert values["unacknowledged_readings"] == 180
        assert isinstance(values["used_bytes"], int) and 0 < values["used_bytes"] <= used
        assert isinstance(values["file_bytes"], int) and values["file_bytes"] >= files
        built = Outbox(store, batch_size=500).build(live=5).result(10)
        with OutboxReader(store.path) as reader:
            health = [
                h for seq in built.live for h in decode_batch(reader.payload(seq) or b"").health
            ]
    power = [h.values["event"] for h in health if h.kind == HealthKind.POWER]
    assert power == ["start", "stop", "start"]
    assert [h for h in health if h.kind == HealthKind.STORAGE] == [record]


def test_written_again_every_interval_with_the_count_then(tmp_path: Path) -> None:
    with Store.open(tmp_path / "gw.db", gateway_id="gw", storage_interval=0.05) as store:
        store.submit_many(reading(i) for i in range(50))
        assert store.flush(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            r.values["unacknowledged_readings"] == 50 for r in storage(store)
        ):
            time.sleep(0.02)
        store.mark_acknowledged(Kind.READINGS, 50).result(10)
        seen = len(storage(store))
        while time.monotonic() < deadline and len(storage(store)) < seen + 2:
            time.sleep(0.02)
        records = storage(store)
    counts = [r.values["unacknowledged_readings"] for r in records]
    assert counts[0] == 0  # at start: an empty store
    assert 50 in counts  # a later one saw the readings
    assert counts[-1] == 0  # and one after the acknowledgement, none waiting
    assert len(counts) >= seen + 2
    assert [r.ts_ms for r in records] == sorted(r.ts_ms for r in records)


def test_not_written_without_an_interval(tmp_path: Path) -> None:
    with Store.open(tmp_path / "gw.db", gateway_id="gw", retention_interval=0.01) as store:
        store.submit(reading(0))
        assert store.flush(10)
        time.sleep(0.1)  # several retention-interval periods (no max_bytes: no pass either)
        assert store.flush(10)
        assert storage(store) == []
        assert store.stats().storage_records == 0
