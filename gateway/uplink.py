"""The uplink: the outbox's batches to the master over MQTT (design.md, "Delivery").

Two threads.  The *network* thread owns the paho client: it connects, runs paho's
loop, and reconnects after a loss -- at once when a TCP probe (every
``probe_interval`` s, jittered) finds the broker listening again, otherwise with
exponential back-off and jitter between ``backoff_min`` and ``backoff_max``.  paho's
callbacks only put events on a queue.  The *worker* thread takes those events,
builds batches (:class:`~gateway.store.outbox.Outbox`, on the store's writer thread),
reads them from the store -- never from memory -- and publishes them at QoS 1 with
at most ``max_inflight`` waiting for the broker's PUBACK.  The session is persistent
(clean_session False, fixed client id); ``up/status`` is retained ``online`` and the
last will sets it ``offline``.

A PUBACK only means the broker has a batch.  The master's acknowledgement on
``down/ack`` (highest contiguous seq, missing seqs) lets the outbox prune; a missing
seq is re-sent, and so is every unacknowledged batch after a reconnection or when no
acknowledgement came within ``ack_timeout``.  At most ``window`` batches are built
and unacknowledged at a time; after an outage the backlog is built into batches at
``drain_rate`` batches/s, while live batches (the newest records) go first.

Commands: given ``on_command``, the uplink also subscribes to ``down/cmd`` on the same
connection (persistent session: commands sent while the gateway was away arrive when
it is back) and hands each payload to ``on_command`` from the worker thread (it must
only queue).  :meth:`Uplink.publish_reply` sends a reply on ``up/reply`` at QoS 1.
"""

from __future__ import annotations

import logging
import queue
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import Uplink as UplinkConfig
from gateway.errors import GatewayError, UplinkError
from gateway.protocols.batch import HealthKind, HealthRecord, decode_ack
from gateway.protocols.topics import (
    QOS,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    ack_topic,
    batch_topic,
    command_topic,
    reply_topic,
    status_topic,
)
from gateway.store.outbox import Built, Outbox, OutboxReader
from gateway.store.store import Store

__all__ = ["Uplink", "UplinkSettings", "backoff_delay"]

_log = logging.getLogger("gateway.uplink")


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    """How the uplink paces itself (the broker and topics come from the configuration)."""

    batch_size: int = 200
    """Readings (and at most as many of each other kind) per batch."""
    linger: float = 2.0
    """Seconds a partial live batch waits for more records."""
    window: int = 32
    """Batches built and not yet acknowledged by the master, at most."""
    max_inflight: int = 16
    """Publishes waiting for the broker's PUBACK, at most."""
    drain_rate: float = 20.0
    """Backlog batches built per second after an outage."""
    live_threshold: int = 1000
    """Unsent readings beyond which the oldest become backlog."""
    ack_timeout: float = 10.0
    """A batch published without the master's acknowledgement is re-sent after this."""
    resend_gap: float = 1.0
    """A batch the master reports missing is re-sent at most this often."""
    probe_interval: float = 0.5
    backoff_min: float = 1.0
    backoff_max: float = 30.0
    tick: float = 0.05
    """Seconds the worker waits for an event before it looks at the store again."""


def backoff_delay(failures: int, settings: UplinkSettings, rng: random.Random) -> float:
    """Seconds to wait after ``failures`` (>= 1) failed or lost connections in a row.

    ``backoff_min`` doubling with each failure, capped at ``backoff_max``, then jittered
    down to between half and all of it (``rng``), so gateways that lost the same broker
    do not all come back at once.
    """
    s = settings
    doublings = min(max(failures, 1) - 1, 16)
    base = min(s.backoff_max, s.backoff_min * float(1 << doublings))
    return base * rng.uniform(0.5, 1.0)


class Uplink:
    """Publishes ``store``'s outbox to the broker of ``config``; :meth:`start`, :meth:`stop`.

    ``rng`` jitters the reconnection back-off and the probe interval (tests give a
    seeded or fixed one).
    """

    def __init__(
        self,
        store: Store,
        config: UplinkConfig,
        settings: UplinkSettings | None = None,
        *,
        gateway_id: str | None = None,
        on_command: Callable[[bytes], object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self._rng = rng or random.Random()
        self.on_command = on_command
        self.config = config
        self.settings = s = settings or UplinkSettings()
        self.gateway_id = gateway_id or store.meta.gateway_id
        self.epoch = store.meta.epoch
        self.outbox = Outbox(store, batch_size=s.batch_size, live_threshold=s.live_threshold)
        try:
            self._batch_topic = batch_topic(config.prefix, self.gateway_id)
            self._status_topic = status_topic(config.prefix, self.gateway_id)
            self._ack_topic = ack_topic(config.prefix, self.gateway_id)
            self._command_topic = command_topic(config.prefix, self.gateway_id)
            self._reply_topic = reply_topic(config.prefix, self.gateway_id)
        except GatewayError as exc:
            raise UplinkError(f"uplink topics: {exc}") from exc
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._client = self._make_client()
        self._network_thread = threading.Thread(
            target=self._network, name="uplink-net", daemon=True
        )
        self._worker_thread = threading.Thread(target=self._work, name="uplink", daemon=True)
        # worker state (worker thread only)
        self._connected = False
        self._inflight: dict[int, int] = {}  # paho mid -> seq
        self._sent_at: dict[int, float] = {}  # seq -> monotonic time of the last publish
        self._resend: set[int] = set()
        self._sent: Counter[int] = Counter()
        self._acked_seq = 0
        self._ack_future: Future[Any] | None = None
        self._ack_dirty = False
        self._last_live = 0.0
        self._tokens = 0.0
        self._last_fill = time.monotonic()
        self._last_refresh = 0.0
        # counters (any thread, under the lock)
        self._published = 0
        self._republished = 0
        self._connects = 0
        self._last_error: str | None = None
        self._depth = 0
        self._backlog = 0
        self._mqtt_ok = False
        self._commands_ready = False
        self._command_mid: int | None = None

    # -- life ------------------------------------------------------------------------------

    def start(self) -> Uplink:
        self._network_thread.start()
        self._worker_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Say ``offline`` (retained) if connected, disconnect, end both threads."""
        self._stop.set()
        self._worker_thread.join(timeout)
        self._network_thread.join(timeout)

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._mqtt_ok

    @property
    def commands_ready(self) -> bool:
        """The broker acknowledged the subscription to ``down/cmd`` on this connection:
        a command published from now on reaches the gateway (one published before its
        first subscription ever is not kept for it)."""
        with self._lock:
            return self._commands_ready

    def alive(self) -> bool:
        return self._worker_thread.is_alive() and self._network_thread.is_alive()

    def publish_reply(self, payload: bytes) -> None:
        """Send a command reply on ``up/reply`` (QoS 1; any thread, never blocks)."""
        self._events.put(("reply", bytes(payload)))

    def status(self) -> dict[str, object]:
        """Broker state, outbox depth and counters (for ``gateway status`` and the demo)."""
        with self._lock:
            return {
                "broker": f"{self.config.host}:{self.config.port}",
                "connected": self._mqtt_ok,
                "epoch": self.epoch,
                "outbox_batches": self._depth,
                "unbatched_readings": self._backlog,
                "acked_seq": self._acked_seq,
                "published": self._published,
                "republished": self._republished,
                "connects": self._connects,
                "last_error": self._last_error,
            }

    # -- paho (network thread; callbacks only enqueue) -------------------------------------

    def _make_client(self) -> mqtt.Client:
        c = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=c.client_id or f"gateway-{self.gateway_id}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(self.settings.max_inflight)
        client.will_set(self._status_topic, STATUS_OFFLINE, qos=QOS, retain=True)
        if c.tls:
            try:
                client.tls_set()
            except (OSError, ValueError) as exc:
                raise UplinkError(f"uplink TLS setup failed: {exc}") from exc
        ev = self._events
        client.on_connect = lambda _c, _u, _f, rc, _p: ev.put(
            ("connack", not rc.is_failure, str(rc))
        )
        client.on_disconnect = lambda _c, _u, _f, rc, _p: ev.put(("disconnected", str(rc)))
        client.on_publish = lambda _c, _u, mid, _rc, _p: ev.put(("puback", mid))
        client.on_subscribe = lambda _c, _u, mid, _rcs, _p: ev.put(("suback", mid))
        client.on_message = lambda _c, _u, msg: ev.put(("message", msg.topic, msg.payload))
        return client

    def _network(self) -> None:
        c, s = self.config, self.settings
        client = self._client
        client.connect_async(c.host, c.port, keepalive=c.keepalive)
        failures = 0
        while not self._stop.is_set():
            refused = False
            try:
                client.reconnect()
            except (OSError, ValueError) as exc:
                refused = True
                self._note_error(f"cannot connect to {c.host}:{c.port}: {exc}")
            else:
                connected_at = time.monotonic()
                while not self._stop.is_set():
                    rc = client.loop(timeout=0.1)
                    if rc != mqtt.MQTT_ERR_SUCCESS:
                        break
                if self._stop.is_set():
                    self._finish(client)
                    return
                self._events.put(("lost",))
                if time.monotonic() - connected_at > 10 * s.backoff_min:
                    failures = 0
            failures += 1
            self._wait(backoff_delay(failures, s, self._rng), probe=refused)

    def _finish(self, client: mqtt.Client) -> None:
        """Stopping while connected: offline (retained), then a clean DISCONNECT."""
        try:
            info = client.publish(self._status_topic, STATUS_OFFLINE, qos=QOS, retain=True)
            deadline = time.monotonic() + 1.0
            while not info.is_published() and time.monotonic() < deadline:
                if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
            client.disconnect()
            client.loop(timeout=0.1)
        except (OSError, ValueError, RuntimeError) as exc:
            _log.debug("uplink: disconnect at stop failed: %s", exc)

    def _wait(self, delay: float, *, probe: bool) -> None:
        """Sleep ``delay`` s; when ``probe``, end early once the broker's port answers."""
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            step = min(left, self.settings.probe_interval * self._rng.uniform(0.8, 1.2))
            if self._stop.wait(step):
                return
            if probe and self._listening():
                return

    def _listening(self) -> bool:
        try:
            socket.create_connection((self.config.host, self.config.port), timeout=1.0).close()
        except OSError:
            return False
        return True

    def _note_error(self, text: str) -> None:
        with self._lock:
            first = self._last_error != text
            self._last_error = text
        if first:
            _log.warning("uplink: %s (retrying)", text)

    # -- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            with OutboxReader(self.store.path) as reader:
                while not self._stop.is_set():
                    self._take_events(self.settings.tick)
                    self._settle_ack()
                    self._build(reader)
                    if self._connected:
                        self._publish(reader)
                    self._refresh(reader)
        except Exception as exc:  # the uplink must say why it stopped
            _log.error("uplink worker stopped: %s", exc, exc_info=True)
            with self._lock:
                self._last_error = f"worker stopped: {exc}"

    def _take_events(self, timeout: float) -> None:
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._handle(event)
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "connack":
            if not event[1]:
                self._note_error(f"broker refused the connection: {event[2]}")
                return
            self._connected = True
            self._inflight.clear()
            self._sent_at.clear()
            self._client.subscribe(self._ack_topic, qos=QOS)
            if self.on_command is not None:
                _, self._command_mid = self._client.subscribe(self._command_topic, qos=QOS)
            self._client.publish(self._status_topic, STATUS_ONLINE, qos=QOS, retain=True)
            with self._lock:
                self._mqtt_ok = True
                self._connects += 1
                self._last_error = None
            _log.info("uplink connected to %s:%d", self.config.host, self.config.port)
            self._health("connected")
        elif kind in ("lost", "disconnected"):
            if self._connected and not self._stop.is_set():
                _log.warning("uplink lost the broker %s:%d", self.config.host, self.config.port)
                self._health("disconnected")
            self._connected = False
            self._inflight.clear()
            self._sent_at.clear()
            with self._lock:
                self._mqtt_ok = False
                self._commands_ready = False
        elif kind == "suback" and event[1] == self._command_mid:
            with self._lock:
                self._commands_ready = True
        elif kind == "puback":
            self._inflight.pop(event[1], None)
        elif kind == "message" and event[1] == self._ack_topic:
            self._on_ack(event[2])
        elif kind == "message" and event[1] == self._command_topic and self.on_command:
            self.on_command(event[2])
        elif kind == "reply":
            # paho queues a QoS 1 message while disconnected and sends it once back
            self._client.publish(self._reply_topic, event[1], qos=QOS)

    def _on_ack(self, payload: bytes) -> None:
        try:
            ack = decode_ack(payload)
        except GatewayError as exc:
            _log.warning("uplink: unreadable ack ignored: %s", exc)
            return
        if ack.epoch != self.epoch:
            _log.debug("uplink: ack for epoch %d ignored (ours: %d)", ack.epoch, self.epoch)
            return
        if ack.highest_contiguous > self._acked_seq:
            self._acked_seq = ack.highest_contiguous
            self._ack_dirty = True
            for seq in [s for s in self._sent_at if s <= ack.highest_contiguous]:
                del self._sent_at[seq]
        self._resend.update(ack.missing)

    def _settle_ack(self) -> None:
        """One acknowledgement call on the writer thread at a time, with the newest seq."""
        if self._ack_future is not None:
            if not self._ack_future.done():
                return
            error = self._ack_future.exception()
            self._ack_future = None
            if error is not None:
                _log.warning("uplink: acknowledging in the store failed: %s", error)
                self._ack_dirty = True
        if self._ack_dirty:
            self._ack_dirty = False
            sent, self._sent = dict(self._sent), Counter()
            self._ack_future = self.outbox.acknowledge(self.epoch, self._acked_seq, sent)

    def _build(self, reader: OutboxReader) -> None:
        s = self.settings
        now = time.monotonic()
        self._tokens = min(float(s.window), self._tokens + (now - self._last_fill) * s.drain_rate)
        self._last_fill = now
        room = s.window - len(reader.pending())
        if room <= 0:
            return
        unsent = reader.unsent(s.batch_size)
        full = any(n >= s.batch_size for n in unsent.values())
        due = any(unsent.values()) and now - self._last_live >= s.linger
        live = min(room, 4) if (full or due) else 0  # live first: it overtakes a backlog
        backlog = min(room - live, int(self._tokens))
        if not live and not backlog:
            return
        built: Built = self.outbox.build(live=live, partial=due, backlog=backlog).result(30)
        if built.live:
            self._last_live = now
        self._tokens -= len(built.backlog)

    def _publish(self, reader: OutboxReader) -> None:
        s = self.settings
        now = time.monotonic()
        for entry in reader.pending():
            if len(self._inflight) >= s.max_inflight:
                return
            seq = entry.seq
            if seq in self._inflight.values():
                continue
            last = self._sent_at.get(seq)
            wanted = seq in self._resend and (last is None or now - last >= s.resend_gap)
            if last is not None and not wanted and now - last < s.ack_timeout:
                continue
            payload = reader.payload(seq)
            if payload is None:
                continue
            info = self._client.publish(self._batch_topic, payload, qos=QOS)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return
            self._inflight[info.mid] = seq
            self._resend.discard(seq)
            self._sent[seq] += 1
            self._sent_at[seq] = now
            with self._lock:
                self._published += 1
                if entry.sent_count or last is not None:
                    self._republished += 1

    def _refresh(self, reader: OutboxReader) -> None:
        now = time.monotonic()
        if now - self._last_refresh < 1.0:
            return
        self._last_refresh = now
        pending = [e.seq for e in reader.pending()]
        self._resend.intersection_update(pending)
        backlog = reader.backlog()
        with self._lock:
            self._depth = len(pending)
            self._backlog = backlog

    def _health(self, event: str) -> None:
        values: dict[str, int | str] = {
            "event": event,
            "broker": f"{self.config.host}:{self.config.port}",
        }
        try:
            self.store.submit(HealthRecord(self.outbox.now_ms(), HealthKind.UPLINK, values))
        except GatewayError as exc:
            _log.warning("uplink: health record refused: %s", exc)
