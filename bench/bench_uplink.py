"""Uplink: bytes on the wire per reading, and how fast a one-hour backlog drains.

Run: ``.venv/bin/python bench/bench_uplink.py [--seconds S] [--backlog-hours H] [--linger S]``.

The demo's setup: the packaged example bench (simulated DL/T 645 line at 2400 8E1
and Modbus line at 9600 8N1, polled at the line's limit), the gateway runtime with
its uplink (default :class:`~gateway.uplink.UplinkSettings`), a private Mosquitto
and the master's ingest.  The gateway reaches the broker through a TCP relay here
that counts every byte each way, so the figures include the MQTT fixed and variable
headers, topics, packet ids, PUBACKs, the retained status, pings, and the master's
acknowledgements coming back (TCP/IP headers are not counted).

1. Steady state: after a warm-up, bytes up and down over ``--seconds`` divided by
   the readings the master stored meanwhile.
2. Backlog: the gateway's store is first filled with ``--backlog-hours`` of readings
   at the rate measured in 1 (32 synthetic meters, timestamps spread over the hours
   before now), as if the broker had been away that long; then the gateway starts
   polling live with the uplink.  Reported: backlog readings per second into the
   master's store (from the uplink's start until the master has all the backlog
   readings -- counted in its store by meter, live readings not counted), and how
   long live readings waited -- from their timestamp to their arrival at a
   subscriber of ``up/batch`` -- during the drain.

The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import Uplink, example_config_path, load_config
from gateway.master.ingest import Master
from gateway.mosquitto import Mosquitto, free_port
from gateway.poller import PollSettings
from gateway.protocols.batch import decode_batch
from gateway.protocols.quantities import Quantity, Reading
from gateway.runtime import Runtime
from gateway.sim.config import example_sim_config_path, load_sim_config
from gateway.sim.service import Simulator
from gateway.store import Store
from gateway.uplink import UplinkSettings

__all__ = ["main"]


class Relay:
    """A TCP relay from a local port to the broker, counting bytes each way."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            broker = socket.create_connection(self.target)
            for a, b, up in ((client, broker, True), (broker, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def close(self) -> None:
        self._server.close()


class Arrivals:
    """Subscribes to ``up/batch``; (wall ms at arrival, reading ts_ms) for each reading."""

    def __init__(self, broker: Mosquitto) -> None:
        self.seen: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-arrivals")
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("gw/+/up/batch", qos=1)
        self.client.loop_start()
        ready.wait(10)

    def _message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time_ns() // 1_000_000
        batch = decode_batch(msg.payload)
        with self.lock:
            self.seen.extend((now, r.ts_ms) for r in batch.readings)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _runtime(
    work: Path, sim: Simulator, port: int, store: Path, settings: UplinkSettings
) -> Runtime:
    config = load_config(example_config_path())
    buses = tuple(
        dataclasses.replace(b, port=str(sim.bus(b.name).path)) for b in config.serial_buses
    )
    uplink = Uplink(host="127.0.0.1", port=port, client_id=config.uplink.client_id)
    config = dataclasses.replace(config, serial_buses=buses, uplink=uplink)
    rt = Runtime(
        config,
        store_path=store,
        status_socket=None,
        settings=PollSettings(interval=0),
        uplink=settings,
    )
    rt.clock.trust("bench: host clock")
    return rt


def steady(
    work: Path, broker: Mosquitto, seconds: float, settings: UplinkSettings, warmup: float = 6.0
) -> dict[str, float]:
    relay = Relay((broker.host, broker.port))
    sim_config = load_sim_config(example_sim_config_path(), link_dir=str(work / "links-1"))
    with (
        Simulator(sim_config) as sim,
        Master(work / "master-1.db", broker.host, broker.port) as master,
        _runtime(work, sim, relay.port, work / "gw-1.db", settings),
    ):
        time.sleep(warmup)
        up0, down0 = relay.counts()
        stored0, t0 = master.stats.readings, time.monotonic()
        time.sleep(seconds)
        up1, down1 = relay.counts()
        stored1, t1 = master.stats.readings, time.monotonic()
    relay.close()
    readings = stored1 - stored0
    return {
        "readings": readings,
        "readings_per_s": readings / (t1 - t0),
        "bytes_up_per_reading": (up1 - up0) / readings,
        "bytes_down_per_reading": (down1 - down0) / readings,
        "bytes_per_reading": (up1 - up0 + down1 - down0) / readings,
    }


def _fill(store: Path, count: int, hours: float) -> None:
    now = time.time_ns() // 1_000_000
    span = int(hours * 3_600_000)
    meters = 32
    with Store.open(store, gateway_id="bjgc-dr1") as s:
        for start in range(0, count, 10_000):
            s.submit_many(
                Reading(
                    f"{BACKLOG_METERS}{i % meters:02d}",
                    now - span + i * span // count,
                    {
                        Quantity.ENERGY_IMPORT: 1_000_000 + i // meters * 3,
                        Quantity.POWER: 1000 + i % 97,
                        Quantity.VOLTAGE_A: 2200 + i % 13,
                        Quantity.CURRENT_A: 4500 + i % 211,
                    },
                )
                for i in range(start, min(count, start + 10_000))
            )
            s.flush(60)


BACKLOG_METERS = "bl-"
"""Name prefix of the synthetic backlog meters (the live ones are the bench's)."""


def _backlog_count(master_db: Path) -> int:
    """Backlog readings in the master's store (live readings not counted)."""
    with contextlib.closing(sqlite3.connect(f"file:{master_db}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT count(*) FROM readings r JOIN meters m ON m.id = r.meter WHERE m.name LIKE ?",
            (BACKLOG_METERS + "%",),
        ).fetchone()
    return int(row[0])


def _backlog_stored(master_db: Path, count: int, timeout: float) -> bool:
    """Wait until the master has stored all ``count`` backlog readings; False on timeout."""
    deadline = time.monotonic() + timeout
    while _backlog_count(master_db) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def backlog(
    work: Path, broker: Mosquitto, rate: float, hours: float, settings: UplinkSettings
) -> dict[str, float]:
    store = work / "gw-2.db"
    count = int(rate * 3600 * hours)
    _fill(store, count, hours)
    arrivals = Arrivals(broker)
    sim_config = load_sim_config(example_sim_config_path(), link_dir=str(work / "links-2"))
    with (
        Simulator(sim_config) as sim,
        Master(work / "master-2.db", broker.host, broker.port),
    ):
        rt = _runtime(work, sim, broker.port, store, settings)
        started_ms = time.time_ns() // 1_000_000
        t0 = time.monotonic()
        with rt:
            ok = _backlog_stored(work / "master-2.db", count, 600)
            drained = time.monotonic() - t0
            time.sleep(2)
    arrivals.close()
    with arrivals.lock:
        live = [(at - ts) for at, ts in arrivals.seen if ts >= started_ms]
        drain_end = started_ms + int(drained * 1000)
        during = [(at - ts) for at, ts in arrivals.seen if ts >= started_ms and at <= drain_end]
    live.sort()
    during.sort()
    return {
        "backlog_readings": count,
        "drained": float(ok),
        "drain_seconds": drained,
        "backlog_readings_per_s": count / drained,
        "live_readings_during_drain": len(during),
        "live_wait_ms_median_during_drain": during[len(during) // 2] if during else -1,
        "live_wait_ms_max_during_drain": during[-1] if during else -1,
        "live_wait_ms_median": live[len(live) // 2] if live else -1,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="steady-state window")
    parser.add_argument("--backlog-hours", type=float, default=1.0)
    d = UplinkSettings()
    parser.add_argument(
        "--linger", type=float, default=d.linger, help=f"uplink linger, s ({d.linger:g})"
    )
    args = parser.parse_args(argv)
    settings = dataclasses.replace(d, linger=args.linger)
    with tempfile.TemporaryDirectory(prefix="bench-uplink-") as tmp, Mosquitto() as broker:
        work = Path(tmp)
        wire = steady(work, broker, args.seconds, settings)
        print(
            f"steady state: {wire['readings']:.0f} readings in {args.seconds:g} s"
            f" ({wire['readings_per_s']:.1f}/s); on the wire per reading:"
            f" {wire['bytes_up_per_reading']:.2f} B up + {wire['bytes_down_per_reading']:.2f} B"
            f" down = {wire['bytes_per_reading']:.2f} B (MQTT headers, acks, pings included)"
        )
        drain = backlog(work, broker, wire["readings_per_s"], args.backlog_hours, settings)
        print(
            f"backlog: {drain['backlog_readings']:.0f} readings ({args.backlog_hours:g} h at"
            f" {wire['readings_per_s']:.1f}/s) into the master in {drain['drain_seconds']:.1f} s"
            f" = {drain['backlog_readings_per_s']:.0f} readings/s while polling live;"
            f" live readings during the drain waited median"
            f" {drain['live_wait_ms_median_during_drain']:.0f} ms, max"
            f" {drain['live_wait_ms_max_during_drain']:.0f} ms"
        )
        print(json.dumps({"steady": wire, "backlog": drain}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
