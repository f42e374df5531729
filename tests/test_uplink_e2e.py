"""End to end: simulated meters -> gateway runtime (bus threads, journal, uplink) -> a
real Mosquitto -> the master's ingest and store.

- every journaled reading is in the master's store exactly once, through a 60 s
  broker stop during polling (the time from the broker's return to the gateway's
  first batch, and to the master having everything, are printed);
- a gateway store deleted and recreated (new epoch) has its new data stored, not
  discarded as duplicates.
"""

from __future__ import annotations

import dataclasses
import queue
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from polling import gateway_yaml, meters, sim_yaml, wait_for

from gateway.config import Uplink as UplinkConfig
from gateway.config import parse_config
from gateway.master.ingest import Master
from gateway.master.store import MasterStore
from gateway.mosquitto import Mosquitto
from gateway.poller import PollSettings
from gateway.protocols.quantities import Reading
from gateway.runtime import Runtime
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.store import JournalReader, Kind
from gateway.uplink import UplinkSettings

BUSES = [("dl", "dlt645", 38400), ("mb", "modbus", 38400)]
METERS = meters("dl", "dlt645", 2, turnaround_ms=5) + meters("mb", "modbus", 2)
OUTAGE_S = 60.0


def key(r: Reading) -> tuple[object, ...]:
    return (r.meter, r.ts_ms, r.flags, tuple(sorted((int(q), v) for q, v in r.values.items())))


def journal(path: Path) -> Counter[tuple[object, ...]]:
    with JournalReader(path) as reader:
        return Counter(key(r) for _, r in reader.readings(limit=10_000_000))


def stored(master_db: Path, gateway_id: str = "test-gw") -> Counter[tuple[object, ...]]:
    with MasterStore.open(master_db, now_ms=lambda: 0, readonly=True) as store:
        return Counter(key(r) for r in store.readings(gateway_id))


def acked_all(path: Path) -> bool:
    with JournalReader(path) as reader:
        return reader.acknowledged(Kind.READINGS) == reader.last_position(Kind.READINGS)


def integrity(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@contextmanager
def gateway(tmp: Path, sim: Simulator, broker: Mosquitto, store: Path) -> Iterator[Runtime]:
    config = parse_config(gateway_yaml(sim, BUSES, METERS), "gw.yaml")
    uplink = UplinkConfig(host=broker.host, port=broker.port, client_id="gateway-test-gw")
    rt = Runtime(
        dataclasses.replace(config, uplink=uplink),
        store_path=store,
        settings=PollSettings(interval=0),
        status_socket=None,
        reopen_max=0.2,
        uplink=UplinkSettings(),
    )
    with rt:
        yield rt


@contextmanager
def bench(tmp: Path) -> Iterator[Simulator]:
    with Simulator(parse_sim_config(sim_yaml(BUSES, METERS), "s.yaml", link_dir=str(tmp))) as sim:
        yield sim


def first_batch_after_restart(broker: Mosquitto) -> float:
    """Start the broker; seconds from then to the first batch a subscriber sees."""
    seen: queue.Queue[float] = queue.Queue()
    restarted = time.monotonic()
    broker.start()
    listener = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="listener")
    listener.on_message = lambda *_: seen.put(time.monotonic())
    listener.connect(broker.host, broker.port)
    listener.subscribe("gw/+/up/batch", qos=1)
    listener.loop_start()
    try:
        return seen.get(timeout=10) - restarted
    finally:
        listener.loop_stop()
        listener.disconnect()


def test_every_reading_once_through_a_60_s_broker_outage(broker: Mosquitto, tmp_path: Path) -> None:
    store, master_db = tmp_path / "gw.db", tmp_path / "master.db"
    with bench(tmp_path) as sim, Master(master_db, broker.host, broker.port) as master:
        with gateway(tmp_path, sim, broker, store) as rt:
            wait_for(lambda: master.stats.readings > 50, 20, "readings at the master")
            broker.stop()
            outage_start = sum(p.readings for p in rt.pollers.values())
            time.sleep(OUTAGE_S)  # polling goes on, into the journal
            polled_in_outage = sum(p.readings for p in rt.pollers.values()) - outage_start
            assert polled_in_outage > 1000
            # From the broker's restart to the first batch a fresh subscriber sees.  The
            # gateway probes the port every 0.5 s (jittered) while it is away, so it is
            # back within about 0.6 s plus a connection; if the listener subscribed after
            # that first publish it sees a later one, which only overstates the delay.
            # A figure, printed below (measured 0.25-0.54 s; issue: within 2 s).  What
            # guarantees it -- the probe ends any back-off once the port opens -- is tested
            # on its own in test_uplink_delivery.py.
            back = first_batch_after_restart(broker)
            time.sleep(3)  # live polling and the backlog drain together
            for bus in rt.buses.values():
                bus.stop()  # polling ends; the uplink goes on
            assert rt.store is not None and rt.store.flush(10)
            expected = journal(store)
            drain = time.monotonic()
            wait_for(lambda: stored(master_db) == expected, 60, "the master has the journal")
            print(
                f"outage {OUTAGE_S:.0f} s: {polled_in_outage} readings polled meanwhile; first"
                f" batch {back:.3f} s after the broker's restart; all {sum(expected.values())}"
                f" readings at the master {time.monotonic() - drain + 3:.1f} s after that"
            )
            wait_for(lambda: acked_all(store), 20, "the master's acknowledgement")
            status = rt.status()["uplink"]
            assert isinstance(status, dict)
            assert status["connects"] == 2
        assert master.stats.rejected == 0
    got = stored(master_db)
    assert got == journal(store)  # the stop added no reading
    assert max(got.values()) == 1  # exactly once
    assert sum(got.values()) > polled_in_outage
    assert acked_all(store)
    assert integrity(store) == "ok" and integrity(master_db) == "ok"


def one_epoch(
    tmp: Path,
    sim: Simulator,
    broker: Mosquitto,
    master_db: Path,
    before: Counter[tuple[object, ...]],
) -> tuple[int, Counter[tuple[object, ...]]]:
    """Run a gateway on a new store until the master has all it polled: (epoch, journal)."""
    store = tmp / "gw.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    with gateway(tmp, sim, broker, store) as rt:
        assert rt.store is not None
        had = sum(before.values())
        wait_for(lambda: sum(stored(master_db).values()) > had + 20, 20, "new data")
        for bus in rt.buses.values():
            bus.stop()
        assert rt.store.flush(10)
        mine = journal(store)
        wait_for(lambda: stored(master_db) == before + mine, 20, "this epoch stored")
        return rt.store.meta.epoch, mine


def test_a_recreated_store_is_a_new_epoch_and_its_data_is_stored(
    broker: Mosquitto, tmp_path: Path
) -> None:
    master_db = tmp_path / "master.db"
    with bench(tmp_path) as sim, Master(master_db, broker.host, broker.port):
        first, kept = one_epoch(tmp_path, sim, broker, master_db, Counter())
        second, more = one_epoch(tmp_path, sim, broker, master_db, kept)
    assert first != second
    with MasterStore.open(master_db, now_ms=lambda: 0, readonly=True) as central:
        (summary,) = central.summary()
        assert summary.epochs == 2
        assert summary.readings == sum((kept + more).values())
