"""Master ingest: subscribe to the gateways' uplinks, store each batch once, acknowledge.

paho-mqtt runs its own network thread; its callbacks only enqueue (``on_connect``
also queues the SUBSCRIBE).  One worker thread owns the :class:`MasterStore`: it
takes what is queued (up to ``drain`` messages a round), stores each batch in its own
transaction, then publishes on ``<prefix>/<gateway>/down/ack`` one acknowledgement per
(gateway, epoch) touched -- the highest contiguous sequence stored and the missing
ones above it -- and only then PUBACKs the messages to the broker (``manual_ack``).
The session is persistent (``clean_session=False``), so a batch the master received
but had not committed when it died is delivered again by the broker, besides being
re-sent by the gateway; both copies are deduplicated by (gateway, epoch, seq).

The gateways' answers to commands (``up/reply``) are stored too
(:meth:`MasterStore.store_reply`: gateway, command id, status, reason, text, result;
a reply delivered again is stored once) and acknowledged to the broker after their
commit, like batches.

A malformed message is counted, logged, kept in ``rejected`` and acknowledged to the
broker (so it is not delivered forever).  A gateway's retained ``up/status`` is
recorded; when a gateway comes online it is sent its latest acknowledgement.

After losing the broker the client tries again after 1 s, then every
``reconnect_max`` s (default 2): a short wait, so that after a broker restart the
master is subscribed again about as soon as the gateways are (they probe the port
every 0.5 s) and the first batch it stores lists what it missed meanwhile, which the
gateway re-sends at once -- instead of waiting up to paho's usual longer back-off
and then the gateway's ``ack_timeout``.
A store failure stops the worker before anything more is acknowledged
(:attr:`Master.failure`).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.errors import GatewayError, UplinkError
from gateway.master.store import MasterStore
from gateway.protocols.batch import Ack, decode_batch, encode_ack
from gateway.protocols.command import CommandReply, decode_reply
from gateway.protocols.errors import RemoteProtocolError
from gateway.protocols.topics import (
    QOS,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Channel,
    ack_topic,
    check_prefix,
    master_subscription,
    parse_topic,
    shared_subscription,
)
from gateway.store.store import wall_ms

__all__ = ["IngestStats", "Master"]

log = logging.getLogger("gateway.master")


@dataclass(slots=True)
class IngestStats:
    """Counters since :meth:`Master.start`."""

    messages: int = 0
    batches: int = 0
    """Batches stored (new)."""
    duplicates: int = 0
    """Batches received again and stored nothing."""
    readings: int = 0
    """Readings in the new batches."""
    rejected: int = 0
    statuses: int = 0
    replies: int = 0
    """Command replies stored (new)."""
    reply_duplicates: int = 0
    """Command replies received again and stored nothing."""
    acks: int = 0
    """Acknowledgements published on ``down/ack``."""
    connects: int = 0


class _Message(NamedTuple):
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


_STOP = None
_STATUSES = (STATUS_ONLINE, STATUS_OFFLINE, b"")


class Master:
    """One master ingest worker: ``with Master(db, host, port) as master: ...``.

    ``share_group`` subscribes to batches with the shared form
    ``$share/<group>/<prefix>/+/up/batch`` so several workers share them (each needs
    its own ``client_id``).  ``after_commit`` is called after each round's commits,
    before anything is acknowledged (fault injection in tests).
    """

    def __init__(
        self,
        db_path: Path | str,
        host: str,
        port: int,
        *,
        prefix: str = "gw",
        client_id: str = "gateway-master",
        share_group: str | None = None,
        now_ms: Callable[[], int] = wall_ms,
        keepalive: int = 10,
        drain: int = 100,
        after_commit: Callable[[], None] | None = None,
        reconnect_max: int = 2,
    ) -> None:
        self.db_path = Path(db_path)
        self.host, self.port = host, port
        self.prefix = check_prefix(prefix)
        self.client_id = client_id
        self.share_group = share_group
        self._now_ms = now_ms
        self._keepalive = keepalive
        self._drain = max(1, drain)
        self._after_commit = after_commit
        self._reconnect_max = max(1, reconnect_max)
        self._inbox: queue.Queue[_Message | None] = queue.Queue()
        self._stats = IngestStats()
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._generation = 0
        self._connected = False
        self._failure: BaseException | None = None
        self._store: MasterStore | None = None
        self._client: mqtt.Client | None = None
        self._worker: threading.Thread | None = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self, timeout: float | None = 10.0) -> None:
        """Open the store, connect and subscribe; wait up to ``timeout`` s for the SUBACK.

        ``timeout=None`` returns at once (the client keeps trying to connect).
        """
        self._store = MasterStore.open(self.db_path, now_ms=self._now_ms)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(1, self._reconnect_max)
        self._client = client
        self._worker = threading.Thread(target=self._work, name="master-ingest", daemon=True)
        self._worker.start()
        try:
            client.connect_async(self.host, self.port, self._keepalive)
            client.loop_start()
        except (OSError, ValueError) as exc:
            self.stop()
            raise UplinkError(f"master: cannot connect to {self.host}:{self.port}: {exc}") from exc
        if timeout is not None and not self._subscribed.wait(timeout):
            self.stop()
            raise UplinkError(
                f"master: no subscription on the broker at {self.host}:{self.port} in {timeout}s"
            )

    def stop(self) -> None:
        """Finish the round in hand, then disconnect and close the store."""
        if self._worker is not None:
            self._inbox.put(_STOP)
            self._worker.join()
            self._worker = None
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Master:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state --------------------------------------------------------------------------

    @property
    def stats(self) -> IngestStats:
        """A copy of the counters."""
        with self._changed:
            return dataclasses.replace(self._stats)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def failure(self) -> BaseException | None:
        """The store error that stopped the worker, or None."""
        return self._failure

    def alive(self) -> bool:
        """The worker runs (it stops on a store failure)."""
        return self._worker is not None and self._worker.is_alive()

    def wait_until(self, predicate: Callable[[IngestStats], bool], timeout: float) -> bool:
        """Wait until ``predicate(stats)`` holds after a round; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self._stats), timeout)

    # -- paho callbacks (network thread): enqueue only ----------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("master: broker %s:%s refused: %s", self.host, self.port, reason)
            return
        self._generation += 1
        self._connected = True
        with self._changed:
            self._stats.connects += 1
        log.info("master: connected to %s:%s as %s", self.host, self.port, self.client_id)
        client.subscribe(self._subscriptions())

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._connected = False
        log.info("master: disconnected from %s:%s (%s)", self.host, self.port, reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("master: subscription refused: %s", reasons)
            return
        log.info("master: subscribed to %s", ", ".join(t for t, _ in self._subscriptions()))
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._inbox.put(_Message(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._generation))

    def _subscriptions(self) -> list[tuple[str, int]]:
        if self.share_group is None:
            return [(master_subscription(self.prefix), QOS)]
        return [
            (shared_subscription(self.share_group, self.prefix, Channel.BATCH), QOS),
            (shared_subscription(self.share_group, self.prefix, Channel.REPLY), QOS),
            (f"{self.prefix}/+/{Channel.STATUS.value}", QOS),
        ]

    # -- worker thread: owns the store --------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                first = self._inbox.get()
                if first is _STOP:
                    return
                round_ = [first]
                stop = False
                while len(round_) < self._drain:
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    round_.append(item)
                self._round(round_)
                if stop:
                    return
        except GatewayError as exc:
            self._failure = exc
            log.error("master: ingest stopped, nothing more is acknowledged: %s", exc)
        except BaseException as exc:  # a bug: stop acknowledging rather than go on blind
            self._failure = exc
            log.exception("master: ingest stopped by an unexpected error")
        finally:
            with self._changed:
                self._changed.notify_all()

    def _round(self, messages: list[_Message]) -> None:
        acks: dict[str, dict[int, Ack]] = {}
        for message in messages:
            self._handle(message, acks)
        if self._after_commit is not None:
            self._after_commit()
        client = self._client
        assert client is not None
        sent = 0
        for gateway_id, by_epoch in acks.items():
            for ack in by_epoch.values():
                client.publish(ack_topic(self.prefix, gateway_id), encode_ack(ack), qos=QOS)
                sent += 1
        for message in messages:
            if message.qos > 0 and message.generation == self._generation:
                client.ack(message.mid, message.qos)
        with self._changed:
            self._stats.acks += sent
            self._stats.messages += len(messages)
            self._changed.notify_all()

    def _handle(self, message: _Message, acks: dict[str, dict[int, Ack]]) -> None:
        store = self._store
        assert store is not None
        now = self._now_ms()
        try:
            where = parse_topic(message.topic)
            if where.prefix != self.prefix:
                raise RemoteProtocolError(f"prefix {where.prefix!r} is not {self.prefix!r}")
            channel = where.channel
            if channel is Channel.BATCH:
                batch = decode_batch(message.payload)
                if batch.gateway_id != where.gateway_id:
                    raise RemoteProtocolError(
                        f"batch of gateway {batch.gateway_id!r} on its topic of"
                        f" {where.gateway_id!r}"
                    )
                if batch.epoch < 1 or batch.seq < 1:
                    raise RemoteProtocolError(f"epoch {batch.epoch} seq {batch.seq}: must be ≥ 1")
            elif channel is Channel.STATUS and message.payload not in _STATUSES:
                raise RemoteProtocolError(f"status {message.payload[:40]!r}")
            elif channel is Channel.REPLY:
                reply: CommandReply = decode_reply(message.payload)
        except RemoteProtocolError as exc:
            store.reject(message.topic, str(exc), received_ms=now, size=len(message.payload))
            with self._changed:
                self._stats.rejected += 1
            log.warning(
                "master: rejected %d bytes on %s: %s", len(message.payload), message.topic, exc
            )
            return
        if channel is Channel.BATCH:
            stored = store.store_batch(batch, received_ms=now, size=len(message.payload))
            acks.setdefault(batch.gateway_id, {})[batch.epoch] = stored.ack
            with self._changed:
                if stored.new:
                    self._stats.batches += 1
                    self._stats.readings += len(batch.readings)
                else:
                    self._stats.duplicates += 1
            log.debug(
                "master: %s epoch %x seq %d: %s; ack %d%s",
                batch.gateway_id,
                batch.epoch,
                batch.seq,
                f"{len(batch.readings)} readings stored" if stored.new else "duplicate",
                stored.ack.highest_contiguous,
                f" missing {list(stored.ack.missing)}" if stored.ack.missing else "",
            )
            if stored.new and stored.ack.missing:
                log.info(
                    "master: %s epoch %x: seq %d stored, %d before it missing (first %d)",
                    batch.gateway_id,
                    batch.epoch,
                    batch.seq,
                    len(stored.ack.missing),
                    stored.ack.missing[0],
                )
        elif channel is Channel.STATUS:
            with self._changed:
                self._stats.statuses += 1
            if not message.payload:
                return  # a retained status cleared
            status = message.payload.decode("ascii")
            store.set_status(where.gateway_id, status, now)
            log.info("master: gateway %s is %s", where.gateway_id, status)
            if message.payload == STATUS_ONLINE:
                latest = store.latest_ack(where.gateway_id)
                if latest is not None:
                    acks.setdefault(where.gateway_id, {})[latest.epoch] = latest
        elif channel is Channel.REPLY:
            new = store.store_reply(where.gateway_id, reply, received_ms=now)
            with self._changed:
                if new:
                    self._stats.replies += 1
                else:
                    self._stats.reply_duplicates += 1
            log.info(
                "master: %s replied to %s: %s %s%s",
                where.gateway_id,
                reply.command_id.hex() or "-",
                reply.status.name,
                getattr(reply.reason, "name", reply.reason),
                "" if new else " (again)",
            )
