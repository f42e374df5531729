"""The uplink against a real Mosquitto and a small acknowledging master written here:
every journaled reading arrives, acknowledgements prune the outbox and raise the
journal's marks, a missing seq is re-sent, the status topic is retained online and
a clean stop says offline.  (The broker's will after a kill, the probe that finds a
restarted broker, the back-off and the in-flight bound: test_uplink_delivery.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import Uplink as UplinkConfig
from gateway.mosquitto import Mosquitto
from gateway.protocols.batch import Ack, Batch, decode_batch, encode_ack
from gateway.protocols.quantities import EventCode, Quantity, Reading
from gateway.protocols.topics import ack_topic, command_topic, parse_topic
from gateway.store import JournalReader, Kind, Store
from gateway.store.outbox import OutboxReader
from gateway.uplink import Uplink, UplinkSettings

T0 = 1_717_200_000_000
FAST = UplinkSettings(linger=0.2, ack_timeout=3.0, backoff_min=0.5, probe_interval=0.2)


def reading(i: int) -> Reading:
    return Reading(f"m{i % 8}", T0 + i * 100, {Quantity.POWER: i})


class MiniMaster:
    """Subscribes to every gateway's batches, keeps them by (epoch, seq), acknowledges
    the highest contiguous seq and lists the missing ones; ``drop`` loses seqs once."""

    def __init__(self, broker: Mosquitto, prefix: str = "gw") -> None:
        self.prefix = prefix
        self.batches: dict[tuple[int, int], Batch] = {}
        self.received: list[tuple[float, int]] = []  # (monotonic, seq)
        self.statuses: list[bytes] = []
        self.drop: set[int] = set()
        self.acking = True
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="mini-master")
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/+/up/#", qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = self._message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def _message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        topic = parse_topic(msg.topic)
        if topic.name == "status":
            self.statuses.append(msg.payload)
            return
        batch = decode_batch(msg.payload)
        with self.lock:
            self.received.append((time.monotonic(), batch.seq))
            if batch.seq in self.drop:
                self.drop.discard(batch.seq)
                return
            self.batches[(batch.epoch, batch.seq)] = batch
            seqs = {s for e, s in self.batches if e == batch.epoch}
            top = 0
            while top + 1 in seqs:
                top += 1
            missing = [s for s in range(top + 1, max(seqs)) if s not in seqs]
        if self.acking:
            ack = encode_ack(Ack(batch.epoch, top, tuple(missing)))
            client.publish(ack_topic(self.prefix, topic.gateway_id), ack, qos=1)

    def readings(self) -> list[Reading]:
        """Every reading stored, in time order (live batches overtake a backlog)."""
        with self.lock:
            got = [r for _, b in sorted(self.batches.items()) for r in b.readings]
        return sorted(got, key=lambda r: r.ts_ms)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def master(broker: Mosquitto) -> Iterator[MiniMaster]:
    m = MiniMaster(broker)
    yield m
    m.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "gw.db", gateway_id="gw-u", max_delay=0.05) as s:
        yield s


def config(broker: Mosquitto) -> UplinkConfig:
    return UplinkConfig(host=broker.host, port=broker.port, client_id="gateway-gw-u", keepalive=5)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def acked(store: Store) -> int:
    with JournalReader(store.path) as reader:
        return reader.acknowledged(Kind.READINGS)


def test_every_reading_arrives_once_and_acks_prune(
    broker: Mosquitto, master: MiniMaster, store: Store
) -> None:
    store.submit_many(reading(i) for i in range(1000))
    uplink = Uplink(store, config(broker), FAST).start()
    try:
        for i in range(1000, 1300):  # live polling goes on
            store.submit(reading(i))
            time.sleep(0.001)
        store.flush(10)
        wait_for(lambda: acked(store) == 1300, 20, "every reading acknowledged")
        assert master.readings() == [reading(i) for i in range(1300)]
        wait_for(lambda: uplink.status()["outbox_batches"] == 0, 5, "the outbox pruned")
        status = uplink.status()
        assert status["connected"] is True and status["acked_seq"] == store_last_seq(store)
        assert status["unbatched_readings"] == 0
        assert master.statuses[-1] == b"online"
    finally:
        uplink.stop()
    wait_for(lambda: master.statuses[-1:] == [b"offline"], 5, "offline at a clean stop")
    with JournalReader(store.path) as reader:
        uplink_health = [r.values["event"] for _, r in reader.health() if r.kind == 5]
    assert uplink_health == ["connected"]


def store_last_seq(store: Store) -> int:
    with OutboxReader(store.path) as reader:
        return reader.last_seq()


def test_a_missing_batch_is_resent_and_stored(
    broker: Mosquitto, master: MiniMaster, store: Store
) -> None:
    master.drop = {2}
    uplink = Uplink(store, config(broker), FAST).start()
    try:
        for start in range(0, 800, 200):
            store.submit_many(reading(i) for i in range(start, start + 200))
            store.flush(10)
            time.sleep(0.4)
        wait_for(lambda: acked(store) == 800, 20, "every reading acknowledged")
        assert master.readings() == [reading(i) for i in range(800)]
        assert [s for _, s in master.received].count(2) == 2  # once lost, once re-sent
        assert uplink.status()["republished"] >= 1
    finally:
        uplink.stop()


def test_without_master_acks_nothing_is_pruned_and_the_window_bounds_the_outbox(
    broker: Mosquitto, master: MiniMaster, store: Store
) -> None:
    master.acking = False
    settings = UplinkSettings(linger=0.1, window=4, batch_size=50, live_threshold=100)
    store.submit_many(reading(i) for i in range(1000))
    store.flush(10)
    uplink = Uplink(store, config(broker), settings).start()
    try:
        wait_for(lambda: len(master.received) >= 4, 10, "the window published")
        time.sleep(0.5)
        with OutboxReader(store.path) as reader:
            assert len(reader.pending()) == 4  # built only as far as the window allows
        assert acked(store) == 0
        wait_for(lambda: uplink.status()["unbatched_readings"] == 1000 - 4 * 50, 5, "the status")
    finally:
        uplink.stop()


def test_live_readings_overtake_a_backlog_drained_at_a_bounded_rate(
    broker: Mosquitto, master: MiniMaster, store: Store
) -> None:
    store.submit_many(reading(i) for i in range(6000))  # an outage's backlog
    store.flush(10)
    settings = UplinkSettings(linger=0.2, drain_rate=5.0, live_threshold=400)  # 1000/s
    uplink = Uplink(store, config(broker), settings).start()
    try:
        time.sleep(0.5)
        live = Reading("live", T0 + 10**9, {Quantity.POWER: 1})
        store.submit(live)
        store.flush(10)
        sent = time.monotonic()
        wait_for(lambda: live in master.readings(), 5, "the live reading")
        waited = time.monotonic() - sent
        backlog_left = 6000 - (len(master.readings()) - 1)
        assert backlog_left > 1000, backlog_left  # it did not wait for the backlog
        assert waited < 5.0, waited  # the 6000-reading backlog alone takes 6 s at 1000/s
        started = time.monotonic()
        wait_for(lambda: acked(store) == 6001, 20, "the backlog drained")
        rate = backlog_left / (time.monotonic() - started)
        assert rate < 1000 * 1.3, rate  # the drain stays near its bound ...
        # ... and delivers every reading once
        assert master.readings() == [*(reading(i) for i in range(6000)), live]
    finally:
        uplink.stop()


def test_a_store_full_during_an_outage_sends_what_is_left_and_says_what_was_dropped(
    broker: Mosquitto, master: MiniMaster, tmp_path: Path
) -> None:
    with Store.open(tmp_path / "small.db", gateway_id="gw-u", max_delay=0.05) as store:
        store.submit_many(reading(i) for i in range(20_000))  # the broker is away
        store.flush(10)
        with JournalReader(store.path) as reader:
            before = reader.count(Kind.READINGS)
        result = store.enforce_retention(200_000).result(10)
        assert result.dropped_count > 0
        with JournalReader(store.path) as reader:
            left = [r for _, r in reader.readings(limit=100_000)]
        assert len(left) + result.dropped_count == before
        uplink = Uplink(store, config(broker), FAST).start()
        try:
            wait_for(lambda: master.readings() == left, 20, "what is left at the master")
            with master.lock:
                events = [e for b in master.batches.values() for e in b.events]
            assert sum(int(e.detail["count"]) for e in events) == result.dropped_count
            assert {e.code for e in events} == {EventCode.READINGS_DROPPED}
        finally:
            uplink.stop()


def test_commands_are_ready_once_the_broker_acknowledged_the_subscription(
    broker: Mosquitto, store: Store
) -> None:
    # commands_ready turns true only on the SUBACK for down/cmd; a command published from
    # then on arrives (the demo's first top-up waits for it), and a lost broker clears it
    got: list[bytes] = []
    uplink = Uplink(store, config(broker), UplinkSettings(linger=0.1), on_command=got.append)
    assert not uplink.commands_ready
    uplink.start()
    try:
        wait_for(lambda: uplink.commands_ready, 10, "the command subscription")
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cmd-sender")
        sender.connect(broker.host, broker.port)
        sender.loop_start()
        try:
            topic = command_topic(uplink.config.prefix, "gw-u")
            sender.publish(topic, b"\x01\x02", qos=1).wait_for_publish(5)
            wait_for(lambda: got == [b"\x01\x02"], 5, "the command")
        finally:
            sender.loop_stop()
            sender.disconnect()
        broker.stop()
        wait_for(lambda: not uplink.connected, 10, "the loss")
        assert not uplink.commands_ready
        broker.start()
        wait_for(lambda: uplink.commands_ready, 10, "the subscription again")
    finally:
        uplink.stop()
