"""Master ingest through a real Mosquitto: a batch stored once however often it comes,
acknowledgements on ``down/ack`` at the highest contiguous sequence with the missing
ones listed, new epochs stored, malformed messages counted and skipped, retained
status recorded, and the shared-subscription form."""

from __future__ import annotations

import itertools
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.master import IngestStats, Master, MasterStore
from gateway.mosquitto import Mosquitto
from gateway.protocols.batch import Ack, Batch, decode_ack, encode_batch
from gateway.protocols.quantities import Quantity, Reading
from gateway.protocols.topics import STATUS_ONLINE, batch_topic, status_topic

GW = "gw-01"


class FakeGateway:
    """A plain MQTT client that publishes batches as a gateway would and collects acks."""

    def __init__(self, broker: Mosquitto, gateway_id: str = GW, prefix: str = "gw") -> None:
        self.gateway_id, self.prefix = gateway_id, prefix
        self.acks: queue.Queue[Ack] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fake-{gateway_id}")
        self.client.on_message = lambda _c, _u, msg: self.acks.put(decode_ack(msg.payload))
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/{gateway_id}/down/ack", qos=1)
        assert subscribed.wait(5)

    def publish(self, payload: bytes, topic: str | None = None, retain: bool = False) -> None:
        target = topic or batch_topic(self.prefix, self.gateway_id)
        self.client.publish(target, payload, qos=1, retain=retain).wait_for_publish(5)

    def send(self, seq: int, epoch: int = 7, n: int = 3) -> Batch:
        batch = make_batch(seq, epoch=epoch, n=n, gateway=self.gateway_id)
        self.publish(encode_batch(batch))
        return batch

    def ack(self, timeout: float = 15.0) -> Ack:
        return self.acks.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_batch(seq: int, *, epoch: int = 7, n: int = 3, gateway: str = GW) -> Batch:
    return Batch(
        gateway,
        epoch,
        seq,
        tuple(
            Reading(f"m{i}", 1_795_000_000_000 + seq * 1000 + i, {Quantity(1): seq * 10 + i})
            for i in range(n)
        ),
    )


@pytest.fixture
def gateway(broker: Mosquitto) -> Iterator[FakeGateway]:
    fake = FakeGateway(broker)
    yield fake
    fake.close()


@pytest.fixture
def master(broker: Mosquitto, tmp_path: Path) -> Iterator[Master]:
    with Master(tmp_path / "master.db", broker.host, broker.port) as running:
        yield running


def wait(master: Master, done: Callable[[IngestStats], bool]) -> IngestStats:
    assert master.wait_until(done, 10), master.stats
    return master.stats


def stored(master: Master) -> MasterStore:
    return MasterStore.open(master.db_path, now_ms=lambda: 0, readonly=True)


def test_batches_are_stored_and_acknowledged(master: Master, gateway: FakeGateway) -> None:
    sent = [gateway.send(1), gateway.send(2)]
    stats = wait(master, lambda s: s.batches == 2)
    assert stats.readings == 6
    acks = [gateway.ack()]
    while acks[-1].highest_contiguous < 2:
        acks.append(gateway.ack())
    assert acks[-1] == Ack(7, 2)
    with stored(master) as store:
        assert store.readings(GW) == [r for b in sent for r in b.readings]


def test_duplicate_batch_is_stored_once_and_acknowledged_again(
    master: Master, gateway: FakeGateway
) -> None:
    batch = gateway.send(1)
    assert gateway.ack() == Ack(7, 1)
    gateway.publish(encode_batch(batch))
    assert gateway.ack() == Ack(7, 1)  # re-acknowledged, so the gateway can prune
    stats = wait(master, lambda s: s.duplicates == 1)
    assert (stats.batches, stats.readings) == (1, 3)
    with stored(master) as store:
        assert store.readings(GW) == list(batch.readings)
        assert store.summary()[0].batches == 1


def test_gap_keeps_the_ack_at_the_contiguous_seq_and_asks_for_the_missing(
    master: Master, gateway: FakeGateway
) -> None:
    gateway.send(1)
    assert gateway.ack() == Ack(7, 1)
    gateway.send(2)
    assert gateway.ack() == Ack(7, 2)
    gateway.send(4)
    assert gateway.ack() == Ack(7, 2, (3,))
    gateway.send(6)
    assert gateway.ack() == Ack(7, 2, (3, 5))
    gateway.send(3)  # a re-send of what was asked for
    assert gateway.ack() == Ack(7, 4, (5,))
    gateway.send(5)
    assert gateway.ack() == Ack(7, 6)


def test_new_epoch_is_stored_not_discarded(master: Master, gateway: FakeGateway) -> None:
    gateway.send(1, epoch=7)
    assert gateway.ack() == Ack(7, 1)
    gateway.send(1, epoch=8, n=5)  # the gateway's store recreated: same seq, new epoch
    assert gateway.ack() == Ack(8, 1)
    stats = wait(master, lambda s: s.batches == 2)
    assert (stats.readings, stats.duplicates) == (8, 0)
    with stored(master) as store:
        assert store.summary()[0].epochs == 2


def test_malformed_payloads_are_counted_and_skipped(master: Master, gateway: FakeGateway) -> None:
    gateway.publish(b"\xff\x00 not cbor")
    gateway.publish(encode_batch(make_batch(1, gateway="someone-else")))  # wrong topic
    gateway.publish(encode_batch(make_batch(0)))  # sequence numbers start at 1
    gateway.publish(b"maybe", topic=status_topic("gw", GW))
    gateway.send(1)
    assert gateway.ack() == Ack(7, 1)  # what follows is still stored
    stats = wait(master, lambda s: s.rejected == 4 and s.batches == 1)
    assert stats.duplicates == 0
    with stored(master) as store:
        reasons = [reason for _topic, reason in store.rejected()]
        assert len(reasons) == 4
        assert "CBOR" in reasons[0] and "someone-else" in reasons[1] and "seq 0" in reasons[2]
        assert store.summary()[0].readings == 3


def test_retained_status_is_recorded_and_an_online_gateway_gets_its_ack(
    broker: Mosquitto, gateway: FakeGateway, tmp_path: Path
) -> None:
    with Master(tmp_path / "master.db", broker.host, broker.port) as master:
        gateway.send(1)
        assert gateway.ack() == Ack(7, 1)
    gateway.publish(STATUS_ONLINE, topic=status_topic("gw", GW), retain=True)
    # a master started after the retained status sees it, and re-sends the latest ack
    with Master(tmp_path / "master.db", broker.host, broker.port) as master:
        wait(master, lambda s: s.statuses == 1)
        assert gateway.ack() == Ack(7, 1)
        with stored(master) as store:
            assert store.summary()[0].status == "online"


def test_shared_subscription_workers_store_each_batch_once(
    broker: Mosquitto, gateway: FakeGateway, tmp_path: Path
) -> None:
    db = tmp_path / "master.db"
    with (
        Master(db, broker.host, broker.port, share_group="ingest", client_id="w1") as one,
        Master(db, broker.host, broker.port, share_group="ingest", client_id="w2") as two,
    ):
        for seq in range(1, 21):
            gateway.send(seq)
        deadline = time.monotonic() + 10
        while one.stats.batches + two.stats.batches < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert one.stats.batches + two.stats.batches == 20
        assert one.stats.duplicates + two.stats.duplicates == 0
        with stored(one) as store:
            assert store.summary()[0].batches == 20
            assert store.ack_for(GW, 7) == Ack(7, 20)


def test_unreachable_broker_is_an_uplink_error(tmp_path: Path) -> None:
    from gateway.errors import UplinkError
    from gateway.mosquitto import free_port

    with pytest.raises(UplinkError, match="no subscription"):
        Master(tmp_path / "m.db", "127.0.0.1", free_port()).start(timeout=1.0)


def test_a_store_failure_stops_acknowledging(
    broker: Mosquitto, gateway: FakeGateway, tmp_path: Path
) -> None:
    from gateway.errors import StoreError

    def disk_full() -> None:
        raise StoreError("database or disk is full")

    with Master(tmp_path / "m.db", broker.host, broker.port, after_commit=disk_full) as master:
        gateway.send(1)
        deadline = time.monotonic() + 10
        while master.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not master.alive()
        assert isinstance(master.failure, StoreError)
        gateway.send(2)
        with pytest.raises(queue.Empty):
            gateway.ack(timeout=0.5)  # nothing acknowledged: the gateway keeps both batches


def test_after_losing_the_broker_the_master_tries_again_every_two_seconds(
    tmp_path: Path,
) -> None:
    """A listener that accepts the master's TCP connections and closes them at once (no
    CONNACK) stands for a broker that is away: the master's attempts come 1 s, then at
    most 2 s apart (``reconnect_max``), not paho's doubling up to 10 s and more -- so
    after a broker restart it is subscribed again within about 2 s."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    attempts: list[float] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            attempts.append(time.monotonic())
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    master = Master(tmp_path / "master.db", "127.0.0.1", port)
    master.start(timeout=None)
    try:
        deadline = time.monotonic() + 20
        while len(attempts) < 4:
            assert time.monotonic() < deadline, attempts
            time.sleep(0.05)
    finally:
        master.stop()
        server.close()
    gaps = [b - a for a, b in itertools.pairwise(attempts[:4])]
    print("master reconnection attempts apart: " + ", ".join(f"{g:.2f} s" for g in gaps))
    # paho's own schedule with reconnect_delay_set(1, 2) is 1, 2, 2 s; the old
    # (1, 10) gave 1, 2, 4 s.  Bounded generously against a busy machine.
    assert max(gaps) < 3.5, gaps
    assert not master.connected and master.stats.connects == 0
