"""``gateway demo``: what the gateway can do today, on the embedded defaults.

Until the simulator, the polling core and the master station exist (Steps 3-5),
the demo walks one real path through the pieces that do exist:

1. loads and checks the packaged example configuration;
2. plans one poll of every Modbus meter in bus time, against one request per value;
3. builds the DL/T 645 read requests for the DL/T 645 meters and decodes a reply;
4. makes one hour of 15-second readings for every meter (a seeded load), packs
   them into CBOR batches (schema v1), publishes them at QoS 1 through a real
   Mosquitto broker (started here unless ``--broker`` names one), receives them as
   the master would, decodes each batch alone and checks every reading arrived
   exactly as sent.
"""

from __future__ import annotations

import argparse
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import paho.mqtt.client as mqtt

from gateway.config import GatewayConfig, example_config_path, load_config
from gateway.errors import UplinkError
from gateway.mosquitto import Mosquitto
from gateway.protocols import dlt645
from gateway.protocols.batch import Batch, decode_batch, encode_batch, new_epoch
from gateway.protocols.quantities import Quantity, Reading
from gateway.protocols.topics import batch_topic, master_subscription

BATCH_SIZE = 200
INTERVAL_MS = 15_000


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="gateway configuration (default: the packaged example)")
    parser.add_argument(
        "--broker",
        metavar="HOST:PORT",
        help="use this MQTT broker instead of starting a private Mosquitto",
    )
    parser.add_argument("--hours", type=int, default=1, help="hours of readings (default 1)")
    parser.add_argument("--seed", type=int, default=645, help="seed of the simulated load")


def run(args: argparse.Namespace) -> int:
    path = args.config or str(example_config_path())
    config = load_config(path)
    _say(f"configuration {path}")
    _say(
        f"  gateway {config.gateway_id}: {len(config.serial_buses)} buses, "
        f"{len(config.meters)} meters, {len(config.accounts)} accounts, "
        f"{len(config.tariffs)} tariffs"
    )
    _plan_modbus(config)
    _dlt645_frames(config)
    readings = list(_readings(config, args.hours, args.seed))
    return _deliver(config, readings, args.broker)


def _say(line: str) -> None:
    print(line, flush=True)


def _plan_modbus(config: GatewayConfig) -> None:
    from gateway.drivers.profiles import get
    from gateway.protocols.modbus_plan import plan_one_per_register, plan_reads

    _say("\nModbus poll plans (one poll of each meter, bus time at the line's limit)")
    for bus in config.serial_buses:
        if bus.protocol != "modbus":
            continue
        total = naive = 0.0
        for meter in config.meters_on(bus.name):
            profile = get(meter.profile or "generic")
            turnaround = profile.turnaround_ms / 1000
            plan = plan_reads(
                profile.registers,
                bus.line,
                turnaround=turnaround,
                max_registers=profile.max_registers,
            )
            base = plan_one_per_register(profile.registers, bus.line, turnaround=turnaround)
            total += plan.total_time
            naive += base.total_time
            spans = ", ".join(f"{r.start:#06x}+{r.count}" for r in plan.requests)
            _say(
                f"  {bus.name} {meter.id:<14} {profile.name:<8} {len(plan.requests)} requests "
                f"[{spans}] {plan.total_time * 1000:6.1f} ms (one per value: "
                f"{base.total_time * 1000:6.1f} ms)"
            )
        if naive:
            _say(
                f"  {bus.name}: a full poll takes {total * 1000:.0f} ms, "
                f"{total / naive:.0%} of one request per value"
            )


def _dlt645_frames(config: GatewayConfig) -> None:
    _say("\nDL/T 645-2007 frames (forward active energy, DI 00010000)")
    for meter in config.meters:
        bus = config.bus(meter.bus)
        if bus.protocol != "dlt645" or meter.address is None:
            continue
        frame = dlt645.encode(dlt645.ReadRequest(address=meter.address, di=0x00010000))
        _say(f"  {meter.id:<14} request {frame.hex(' ')}")
    # the worked example of domain.md, with a wake-up preamble and line noise around it
    wire = bytes.fromhex(
        "00 FE FE FE FE 68 12 90 78 56 34 12 68 91 08 33 33 33 33 9A 78 56 34 87 16 FF"
    )
    framer = dlt645.Framer()
    for event in framer.feed(wire):
        if isinstance(event, dlt645.ReadReply):
            values = dlt645.reply_quantities(event)
            _say(
                f"  reply from {event.address}: DI {event.di:08X} -> "
                + ", ".join(f"{q.name} {v}" for q, v in values.items())
                + f" (skipped {framer.stats.dropped_bytes} noise bytes)"
            )


def _readings(config: GatewayConfig, hours: int, seed: int) -> Iterator[Reading]:
    """One reading per meter every 15 s from a seeded random load, in integer units."""
    rng = random.Random(seed)
    start_ms = int(time.time() // 3600 * 3600 * 1000)
    state = {
        m.id: [rng.randrange(1_000_000, 90_000_000), rng.randrange(100, 4000), 0]
        for m in config.meters
    }
    for step in range(hours * 3600 * 1000 // INTERVAL_MS):
        for index, meter in enumerate(config.meters):
            energy, power, remainder = state[meter.id]
            power = max(0, power + rng.randrange(-150, 151))
            # integrate power over 15 s into Wh, carrying the remainder: no float
            joules = power * INTERVAL_MS // 1000 + remainder
            energy, remainder = energy + joules // 3600, joules % 3600
            state[meter.id] = [energy, power, remainder]
            voltage = 2200 + rng.randrange(-60, 61)
            yield Reading(
                meter=meter.id,
                ts_ms=start_ms + step * INTERVAL_MS + 40 * index + rng.randrange(0, 20),
                values={
                    Quantity.ENERGY_IMPORT: energy,
                    Quantity.POWER: power,
                    Quantity.VOLTAGE_A: voltage,
                    Quantity.CURRENT_A: power * 10_000 // voltage,
                },
            )


def _deliver(config: GatewayConfig, readings: list[Reading], broker: str | None) -> int:
    epoch = new_epoch()
    batches = [
        Batch(config.gateway_id, epoch, seq, tuple(readings[i : i + BATCH_SIZE]))
        for seq, i in enumerate(range(0, len(readings), BATCH_SIZE), start=1)
    ]
    payloads = [encode_batch(b) for b in batches]
    size = sum(len(p) for p in payloads)
    _say(
        f"\nCBOR batches: {len(readings)} readings of {len(config.meters)} meters in "
        f"{len(batches)} batches, {size} bytes, {size / len(readings):.2f} bytes/reading"
    )
    prefix = config.uplink.prefix if config.uplink else "gw"
    with ExitStack() as stack:
        if broker:
            host, _, port_text = broker.rpartition(":")
            port = int(port_text)
        else:
            mosquitto = stack.enter_context(Mosquitto())
            host, port = mosquitto.host, mosquitto.port
            _say(f"started a private Mosquitto on {host}:{port}")
        received: queue.Queue[bytes] = queue.Queue()
        subscribed = threading.Event()
        master = _client("demo-master", host, port, stack)
        master.on_message = lambda _c, _u, msg: received.put(msg.payload)
        master.on_subscribe = lambda *_a: subscribed.set()
        master.subscribe(master_subscription(prefix), qos=1)
        if not subscribed.wait(10):
            raise UplinkError("the master's subscription was not acknowledged")
        gateway = _client(f"gateway-{config.gateway_id}", host, port, stack)
        topic = batch_topic(prefix, config.gateway_id)
        started = time.monotonic()
        for payload in payloads:
            gateway.publish(topic, payload, qos=1).wait_for_publish(10)
        got = []
        for _ in payloads:
            try:
                got.append(decode_batch(received.get(timeout=10)))
            except queue.Empty:
                raise UplinkError(f"only {len(got)} of {len(payloads)} batches arrived") from None
            _progress(len(got), len(payloads))
        elapsed = time.monotonic() - started
    ok = sorted(got, key=lambda b: b.seq) == batches
    arrived = sum(len(b.readings) for b in got)
    _say(
        f"\nmaster received {len(got)} batches on {topic} in {elapsed:.2f} s: "
        f"{arrived} readings, each batch decoded alone, "
        + ("all equal to what was sent" if ok else "MISMATCH against what was sent")
    )
    _say(
        "\nNot yet in this demo: the simulated RS-485 bus, the polling gateway and the "
        "master's store (Steps 3-5 of the plan)."
    )
    return 0 if ok else 1


def _client(client_id: str, host: str, port: int, stack: ExitStack) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    try:
        client.connect(host, port)
    except OSError as exc:
        raise UplinkError(f"cannot connect to the broker at {host}:{port}: {exc}") from exc
    client.loop_start()
    stack.callback(client.disconnect)
    stack.callback(client.loop_stop)
    return client


def _progress(done: int, total: int) -> None:
    if sys.stdout.isatty():
        width = 30
        filled = width * done // total
        print(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", flush=True)
        if done == total:
            print()
