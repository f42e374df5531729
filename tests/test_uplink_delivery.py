"""Delivery mechanisms of the uplink, each shown on its own against a real Mosquitto:

- the reconnection back-off grows, is capped and is jittered within its bounds (the
  random source injected);
- with a long back-off pending, the TCP probe ends the wait as soon as the broker's
  port opens (what makes "publishes again within 2 s of the broker's return" hold);
- at most ``max_inflight`` publishes wait for their PUBACK (counted on the wire by a
  relay that parses MQTT, with the broker's answers held back);
- a ``gateway run`` process killed with SIGKILL, or frozen with SIGSTOP, is marked
  ``offline`` by the broker's last will within about 1.5 x keepalive;
- a long outage with a small store: the writer's own retention pass drops the oldest
  unacknowledged readings with ``READINGS_DROPPED`` events while money is being
  booked; when the broker is back the ledger is intact and the events and the kept
  readings reach the master's store exactly once.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from polling import gateway_yaml, meters, sim_yaml
from test_uplink import MiniMaster, acked, reading, wait_for
from test_uplink_e2e import integrity, key

from gateway.config import Uplink as UplinkConfig
from gateway.master.ingest import Master
from gateway.master.store import MasterStore
from gateway.mosquitto import Mosquitto, free_port
from gateway.protocols.quantities import EventCode, Reading
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.store import JournalReader, Kind, Store
from gateway.store.db import used_bytes
from gateway.store.ledger import EntryKind, Ledger, LedgerReader, TopUp
from gateway.uplink import Uplink, UplinkSettings, backoff_delay


class Fixed(random.Random):
    """A random source that always gives the low (``at=0``) or high (``at=1``) end."""

    def __init__(self, at: float) -> None:
        super().__init__(0)
        self.at = at

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.at


# -- back-off ------------------------------------------------------------------------------


def test_backoff_grows_is_capped_and_jittered_within_bounds() -> None:
    s = UplinkSettings(backoff_min=1.0, backoff_max=30.0)
    high = [backoff_delay(n, s, Fixed(1.0)) for n in range(1, 10)]
    low = [backoff_delay(n, s, Fixed(0.0)) for n in range(1, 10)]
    assert high == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]  # doubles, then capped
    assert low == [h / 2 for h in high]  # jitter takes off at most half
    assert backoff_delay(10_000, s, Fixed(1.0)) == 30.0  # no overflow after a long outage
    rng = random.Random(4)
    drawn = [backoff_delay(n, s, rng) for n in range(1, 200)]
    bounds = [(lo, hi) for lo, hi in zip(low + [15.0] * 190, high + [30.0] * 190, strict=True)]
    assert all(lo <= d <= hi for d, (lo, hi) in zip(drawn, bounds, strict=True))
    capped = [d / 30.0 for d in drawn[8:]]
    assert len(set(capped)) == len(capped)  # jittered: no two gateways wait alike
    assert min(capped) < 0.6 and max(capped) > 0.9  # and spread over the whole range
    again = random.Random(4)
    assert drawn == [backoff_delay(n, s, again) for n in range(1, 200)]  # from the source


# -- the TCP probe -------------------------------------------------------------------------


class Recorder(Uplink):
    """An uplink that records its back-off waits and its probes (monotonic times)."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.waits: list[tuple[float, float, bool]] = []  # (start, delay, probing)
        self.probes: list[tuple[float, bool]] = []  # (start, listening)

    def _wait(self, delay: float, *, probe: bool) -> None:
        self.waits.append((time.monotonic(), delay, probe))
        super()._wait(delay, probe=probe)

    def _listening(self) -> bool:
        start = time.monotonic()
        up = super()._listening()
        self.probes.append((start, up))
        return up


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "gw.db", gateway_id="gw-u", max_delay=0.05) as s:
        yield s


def uplink_config(broker: Mosquitto, port: int | None = None) -> UplinkConfig:
    return UplinkConfig(
        host=broker.host, port=port or broker.port, client_id="gateway-gw-u", keepalive=5
    )


def test_with_a_long_backoff_pending_the_probe_reconnects_when_the_port_opens(
    broker: Mosquitto, store: Store
) -> None:
    """The back-off grows to 8 s and more while the broker is away; the broker comes
    back during such a wait; the first probe after that finds the port and the uplink
    connects long before the wait would have ended.  (Jitter fixed at its high end.)"""
    probe = 0.2
    settings = UplinkSettings(linger=0.1, backoff_min=0.5, backoff_max=600.0, probe_interval=probe)
    uplink = Recorder(store, uplink_config(broker), settings, rng=Fixed(1.0)).start()
    try:
        wait_for(lambda: uplink.status()["connects"] == 1, 10, "the first connection")
        broker.stop()
        wait_for(lambda: any(d >= 8.0 for _, d, _ in uplink.waits), 20, "an 8 s back-off")
        started, delay, probing = uplink.waits[-1]
        assert probing and delay == 8.0
        assert [d for _, d, _ in uplink.waits] == [0.5, 1.0, 2.0, 4.0, 8.0]
        time.sleep(0.5)  # well inside the 8 s wait
        store.submit(reading(1))
        broker.start()
        opened = time.monotonic()
        # without the probe the uplink would be back at started + 8 s at the earliest
        wait_for(lambda: uplink.status()["connects"] == 2, started + delay - opened - 1, "back")
        back = time.monotonic() - opened
        wait_for(lambda: int(str(uplink.status()["published"])) >= 1, 10, "a batch published")
        after = [(t, up) for t, up in uplink.probes if t >= opened]
        assert after and after[0][1]  # the first probe after the port opened found it
        assert uplink.waits[-1][0] == started  # and ended the 8 s wait: no new wait began
        # probes came every probe_interval x 1.2 (the jitter's top) while it was away
        during = [t for t, _ in uplink.probes if t >= started]
        gaps = [b - a for a, b in itertools.pairwise(during)]
        print(
            f"broker port open -> uplink connected {back:.3f} s (probe every {probe} s"
            f" x 0.8-1.2; pending back-off {delay:.0f} s); probe gaps max {max(gaps):.3f} s"
        )
        assert gaps and min(gaps) >= probe * 1.2 * 0.9  # the injected jitter is used
    finally:
        uplink.stop()


# -- the in-flight window ------------------------------------------------------------------


class MqttRelay:
    """A TCP relay from a local port to the broker that parses MQTT both ways.

    It counts QoS 1/2 PUBLISH packets from the client whose PUBACK has not yet been
    passed back to it (``outstanding``, its maximum ``peak``).  :meth:`hold` stops
    passing the broker's packets to the client (PUBACKs included) until :meth:`release`.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.outstanding: set[int] = set()
        self.peak = 0
        self.publishes = 0
        self.lock = threading.Lock()
        self.flowing = threading.Event()
        self.flowing.set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self.flowing.clear()

    def release(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            broker = socket.create_connection(self.target)
            self._socks += [client, broker]
            threading.Thread(target=self._pipe, args=(client, broker, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(broker, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        buf = b""
        try:
            while data := src.recv(65536):
                buf += data
                while (packet := _packet(buf)) is not None:
                    size, kind, flags, body = packet
                    if not up:
                        self.flowing.wait()
                    self._count(up, kind, flags, body)
                    dst.sendall(buf[:size])
                    buf = buf[size:]
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _count(self, up: bool, kind: int, flags: int, body: bytes) -> None:
        with self.lock:
            if up and kind == 3 and (flags >> 1) & 3:  # PUBLISH, QoS > 0: topic, packet id
                topic_len = int.from_bytes(body[:2], "big")
                pid = int.from_bytes(body[2 + topic_len : 4 + topic_len], "big")
                self.outstanding.add(pid)
                self.publishes += 1
                self.peak = max(self.peak, len(self.outstanding))
            elif not up and kind == 4:  # PUBACK
                self.outstanding.discard(int.from_bytes(body[:2], "big"))

    def close(self) -> None:
        self.release()
        self._server.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()


def _packet(buf: bytes) -> tuple[int, int, int, bytes] | None:
    """(total size, type, flags, variable header and payload) of the first whole packet."""
    if len(buf) < 2:
        return None
    length, shift, i = 0, 0, 1
    while True:
        if i >= len(buf):
            return None
        byte = buf[i]
        length |= (byte & 0x7F) << shift
        shift += 7
        i += 1
        if not byte & 0x80:
            break
    if len(buf) < i + length:
        return None
    return i + length, buf[0] >> 4, buf[0] & 0x0F, buf[i : i + length]


def test_publishes_waiting_for_their_puback_never_exceed_max_inflight(
    broker: Mosquitto, store: Store
) -> None:
    master = MiniMaster(broker)
    relay = MqttRelay((broker.host, broker.port))
    settings = UplinkSettings(
        linger=0.1, batch_size=20, window=24, max_inflight=3, live_threshold=100_000
    )
    uplink = Uplink(store, uplink_config(broker, relay.port), settings).start()
    try:
        wait_for(lambda: uplink.connected and master.statuses[-1:] == [b"online"], 10, "online")
        relay.hold()  # the broker's PUBACKs (and everything else) stop reaching the gateway
        store.submit_many(reading(i) for i in range(2000))
        store.flush(10)
        wait_for(lambda: len(relay.outstanding) >= 3, 10, "publishes in flight")
        time.sleep(1.0)  # batches are built (window 24) and waiting; nothing more goes out
        with relay.lock:
            held = (len(relay.outstanding), relay.publishes)
        with JournalReader(store.path) as reader:
            unacked = len(reader.readings(limit=10_000, unacknowledged=True))
        assert held[0] == 3, held  # exactly the window, never more
        assert unacked == 2000
        relay.release()
        wait_for(lambda: acked(store) == 2000, 30, "every reading acknowledged")
        assert master.readings() == [reading(i) for i in range(2000)]
        print(
            f"max_inflight 3: {relay.publishes} QoS 1 publishes, at most {relay.peak} waiting"
            f" for a PUBACK; {held[0]} in flight while the broker's answers were held"
        )
        assert relay.peak == 3  # reached while held, never exceeded over the whole run
        assert relay.publishes >= 2000 // 20
    finally:
        uplink.stop()
        relay.close()
        master.close()


# -- the last will -------------------------------------------------------------------------

BUSES = [("mb", "modbus", 38400)]
METERS = meters("mb", "modbus", 1)
KEEPALIVE = 2


class StatusWatch:
    """Subscribes to ``gw/test-gw/up/status``: (monotonic, payload, retained) for each."""

    def __init__(self, broker: Mosquitto) -> None:
        self.seen: list[tuple[float, bytes, bool]] = []
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{time.time_ns()}")
        self.client.on_message = lambda _c, _u, m: self.seen.append(
            (time.monotonic(), bytes(m.payload), bool(m.retain))
        )
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("gw/test-gw/up/status", qos=1)
        self.client.loop_start()
        assert ready.wait(10)

    def last(self) -> bytes | None:
        return self.seen[-1][1] if self.seen else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained_status(broker: Mosquitto) -> bytes | None:
    """What a new subscriber is given as the retained status."""
    watch = StatusWatch(broker)
    try:
        deadline = time.monotonic() + 2.0
        while not watch.seen and time.monotonic() < deadline:
            time.sleep(0.02)
        return watch.last()
    finally:
        watch.close()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["sigkill", "sigstop"])
def test_the_broker_says_offline_for_a_killed_or_frozen_gateway(
    broker: Mosquitto, tmp_path: Path, how: signal.Signals
) -> None:
    """SIGKILL: the kernel closes the socket, the broker sends the will at once.  SIGSTOP:
    the socket stays open but no ping comes; the broker gives up after 1.5 x keepalive
    and sends the will.  Either way nothing of the gateway's own code runs."""
    sim_config = parse_sim_config(sim_yaml(BUSES, METERS), "s.yaml", link_dir=str(tmp_path))
    with Simulator(sim_config) as sim:
        text = gateway_yaml(sim, BUSES, METERS, store=str(tmp_path / "gw.db")).replace(
            "uplink: {host: localhost}",
            f"uplink: {{host: {broker.host}, port: {broker.port}, keepalive: {KEEPALIVE}}}",
        )
        (tmp_path / "gw.yaml").write_text(text)
        command = [sys.executable, "-m", "gateway", "run", "--config", str(tmp_path / "gw.yaml")]
        command += ["--socket", str(tmp_path / "s.sock"), "--interval", "0"]
        watch = StatusWatch(broker)
        run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: watch.last() == b"online", 20, "the gateway online")
            assert retained_status(broker) == b"online"
            run.send_signal(how)
            signalled = time.monotonic()
            # the bound is about 1.5 x keepalive; waited for with room to spare
            wait_for(lambda: watch.last() == b"offline", 1.5 * KEEPALIVE + 5, "offline")
            after = watch.seen[-1][0] - signalled
            assert run.poll() is None if how == signal.SIGSTOP else run.poll() == -how
            assert retained_status(broker) == b"offline"  # retained for whoever comes later
            print(f"{how.name}: offline {after:.2f} s after the signal (keepalive {KEEPALIVE} s)")
            if how == signal.SIGSTOP:
                # the broker waited for missed pings: 1.5 x keepalive from the last packet
                # it had, which was at most one keepalive before the signal
                assert after >= 0.5 * KEEPALIVE, after
        finally:
            run.kill()
            if how == signal.SIGSTOP:
                run.send_signal(signal.SIGCONT)
            run.wait(10)
            watch.close()


# -- retention during a long outage, with money --------------------------------------------


def test_a_long_outage_with_a_small_store_keeps_money_and_says_what_was_dropped(
    broker: Mosquitto, tmp_path: Path
) -> None:
    path, master_db = tmp_path / "gw.db", tmp_path / "master.db"
    with Store.open(path, gateway_id="gw-u") as s:
        base = s.writer.call(used_bytes).result(10)
    max_bytes = base + 400_000  # about 5000 readings
    # a small window: batches built during the outage keep their payloads (and so the
    # readings in them): retention deletes those rows without calling them dropped
    fast = UplinkSettings(
        linger=0.2, ack_timeout=3.0, backoff_min=0.5, probe_interval=0.2, window=4, batch_size=100
    )
    submitted: list[Reading] = []
    with (
        Store.open(
            path, gateway_id="gw-u", max_delay=0.05, max_bytes=max_bytes, retention_interval=0.2
        ) as store,
        Master(master_db, broker.host, broker.port) as master,
    ):
        ledger = Ledger(store)
        ledger.open_account(
            "A", "prepaid", trip_on_arrears=True, opened_day=date(2024, 6, 1), opened_ms=0
        ).result(10)
        uplink = Uplink(store, uplink_config(broker), fast).start()
        try:

            def flow(start: int, stop: int) -> None:
                for first in range(start, stop, 500):
                    chunk = [reading(i) for i in range(first, min(stop, first + 500))]
                    submitted.extend(chunk)
                    store.submit_many(chunk)
                    money = TopUp(f"t{first}", "A", EntryKind.TOP_UP, 100 + first, first)
                    assert ledger.top_up(money).result(10).applied
                    time.sleep(0.02)

            flow(0, 2000)  # before the outage: delivered and acknowledged
            wait_for(lambda: acked(store) == 2000, 20, "the first readings acknowledged")
            broker.stop()
            wait_for(lambda: not uplink.connected, 10, "the uplink to see the loss")
            flow(2000, 20_000)  # a long outage: 18 000 readings and 36 top-ups
            store.flush(10)
            wait_for(lambda: drops(path), 10, "the writer's retention pass to drop readings")
            time.sleep(0.5)  # one more pass at least
            assert store.flush(10)
            assert store.writer.call(used_bytes).result(10) <= max_bytes
            broker.start()
            with JournalReader(path) as reader:
                last = reader.last_position(Kind.READINGS)
            wait_for(lambda: acked(store) == last, 60, "the kept readings acknowledged")
            wait_for(lambda: store_has_all(master_db, path), 20, "events and ledger at the master")
            assert ledger.check().result(10) == []  # every balance equals its entries
        finally:
            uplink.stop()
        assert master.stats.rejected == 0
    with JournalReader(path) as reader:
        kept = [r for _, r in reader.readings(limit=100_000)]
        events = [e for _, e in reader.events(limit=100_000)]
    with LedgerReader(path) as reader:
        entries = reader.entries(limit=100_000)
    with MasterStore.open(master_db, now_ms=lambda: 0, readonly=True) as central:
        got = Counter(key(r) for r in central.readings("gw-u"))
        got_events = central.events("gw-u")
        got_ledger = central.ledger("gw-u")
    dropped = [e for e in events if e.code == EventCode.READINGS_DROPPED]
    assert dropped and got_events == events  # the drop events, exactly once
    assert got_ledger == entries and len(entries) == 40  # every top-up, once
    assert entries[-1].balance_after == sum(100 + f for f in range(0, 20_000, 500))
    assert max(got.values()) == 1  # exactly once
    assert set(got) <= {key(r) for r in submitted}
    assert all(key(r) in got for r in kept)  # everything kept reached the master
    missing = [r for r in submitted if key(r) not in got]
    assert missing and all(r.ts_ms >= reading(2000).ts_ms for r in missing)  # unacked only
    spans = {(e.meter, int(e.detail["first_ts_ms"]), int(e.detail["last_ts_ms"])) for e in dropped}
    assert all(any(m == r.meter and lo <= r.ts_ms <= hi for m, lo, hi in spans) for r in missing)
    counted = sum(int(e.detail["count"]) for e in dropped)
    # exactly what was lost: readings already in built batches are not claimed dropped
    assert counted == len(missing)
    print(
        f"store bound {max_bytes} B: {len(submitted)} readings, {len(kept)} kept, "
        f"{counted} dropped in {len(dropped)} events, each never reached the master"
    )
    assert integrity(path) == "ok" and integrity(master_db) == "ok"


def drops(path: Path) -> bool:
    with JournalReader(path) as reader:
        return any(e.code == EventCode.READINGS_DROPPED for _, e in reader.events(limit=100_000))


def store_has_all(master_db: Path, path: Path) -> bool:
    with JournalReader(path) as reader:
        events = [e for _, e in reader.events(limit=100_000)]
    with LedgerReader(path) as reader:
        entries = reader.entries(limit=100_000)
    with MasterStore.open(master_db, now_ms=lambda: 0, readonly=True) as central:
        return central.events("gw-u") == events and central.ledger("gw-u") == entries
