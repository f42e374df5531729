"""``gateway demo``: the gateway at work on the embedded defaults.

1. starts the simulated bench of the packaged example (``gateway/sim/examples/sim.yaml``:
   a DL/T 645 line at 2400 8E1 and a Modbus line at 9600 8N1, two transformer
   areas) on pseudo-terminals;
2. runs the gateway core of the packaged example configuration against it (bus
   threads polling at the line's limit, collection tasks, the SQLite journal) and
   shows one line per bus every two seconds: transactions, bus efficiency against
   the line's limit, readings, flagged meters;
3. then forwards the journal as it would go to the master: CBOR batches (schema v1)
   published at QoS 1 through a real Mosquitto (started here unless ``--broker``
   names one) to a master subscriber that decodes each batch alone and checks that
   every journaled reading arrived exactly once and unchanged.

The uplink service and the master's store come with Step 5; step 3 here is their
wire format and broker path, run by the demo itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import queue
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import paho.mqtt.client as mqtt

from gateway.config import GatewayConfig, example_config_path, load_config
from gateway.errors import UplinkError
from gateway.mosquitto import Mosquitto
from gateway.poller import PollSettings
from gateway.protocols.batch import Batch, decode_batch, encode_batch
from gateway.protocols.quantities import Reading
from gateway.protocols.topics import batch_topic, master_subscription
from gateway.runtime import Runtime
from gateway.sim.config import example_sim_config_path, load_sim_config
from gateway.sim.service import Simulator
from gateway.store import JournalReader

BATCH_SIZE = 200


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="how long the gateway polls before forwarding (default 20; 0 = until Ctrl-C)",
    )
    parser.add_argument(
        "--broker",
        metavar="HOST:PORT",
        help="use this MQTT broker instead of starting a private Mosquitto",
    )
    parser.add_argument("--workdir", help="keep the store and links here (default: a temp dir)")


def run(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        work = Path(args.workdir or stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        sim_config = load_sim_config(example_sim_config_path(), link_dir=str(work / "links"))
        sim = stack.enter_context(Simulator(sim_config, state_path=work / "sim-state.json"))
        config = _on_simulator(load_config(example_config_path()), sim, work)
        _say(
            f"simulator: {len(sim_config.buses)} buses, {len(sim_config.meters)} meters on "
            + ", ".join(f"{b.name} -> {sim.bus(b.name).path}" for b in sim_config.buses)
        )
        # interval 0: every bus polls continuously, at the line's limit
        runtime = Runtime(
            config,
            status_socket=work / "status.sock",
            settings=PollSettings(interval=0),
            calendar=True,
        )
        runtime.clock.trust("demo: host clock")
        with runtime:
            _say(f"gateway {config.gateway_id}: polling; store {runtime.store_path}")
            _watch(runtime, args.seconds)
        readings = _journal(runtime.store_path)
        _say(f"journal: {len(readings)} readings")
        return _forward(config, readings, args.broker, stack)


def _say(line: str) -> None:
    print(line, flush=True)


def _on_simulator(config: GatewayConfig, sim: Simulator, work: Path) -> GatewayConfig:
    """The example configuration with its ports on the simulator's links."""
    buses = tuple(
        dataclasses.replace(bus, port=str(sim.bus(bus.name).path)) for bus in config.serial_buses
    )
    store = dataclasses.replace(config.store, path=str(work / "gateway.db"))
    return dataclasses.replace(config, serial_buses=buses, store=store)


def _watch(runtime: Runtime, seconds: float) -> None:
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    try:
        while time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            status = runtime.status()
            tasks = status.get("tasks") or {}
            for bus in status["buses"]:  # type: ignore[union-attr]
                poll = bus["poll"]
                flagged = ", ".join(f"{f['meter']} ({f['cause']})" for f in poll["flagged"])
                _say(
                    f"  {bus['name']:<8} {bus['line']:<10} {bus['transactions']:>5} transactions"
                    f"  efficiency {bus['efficiency']:.3f}  {poll['readings']:>4} readings"
                    f"  flagged: {flagged or 'none'}"
                )
            if isinstance(tasks, dict):
                jobs, failed = tasks.get("jobs", 0), tasks.get("failed_jobs", 0)
                _say(
                    f"  tasks    {jobs} freeze/back-fill reads ({failed} without a freeze),"
                    f" {tasks.get('curve_points', 0)} curve points"
                )
    except KeyboardInterrupt:
        _say("  (stopping)")


def _journal(path: Path) -> list[Reading]:
    with JournalReader(path) as reader:
        out: list[Reading] = []
        after = 0
        while batch := reader.readings(after=after, limit=5000):
            out.extend(r for _, r in batch)
            after = batch[-1][0]
        return out


def _forward(
    config: GatewayConfig, readings: list[Reading], broker: str | None, stack: ExitStack
) -> int:
    if not readings:
        _say("no readings to forward")
        return 1
    with JournalReader(config.store.path) as reader:
        epoch = reader.meta().epoch
    batches = [
        Batch(config.gateway_id, epoch, seq, tuple(readings[i : i + BATCH_SIZE]))
        for seq, i in enumerate(range(0, len(readings), BATCH_SIZE), start=1)
    ]
    payloads = [encode_batch(b) for b in batches]
    size = sum(len(p) for p in payloads)
    _say(f"CBOR: {len(batches)} batches, {size} bytes, {size / len(readings):.2f} bytes/reading")
    prefix = config.uplink.prefix if config.uplink else "gw"
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
    for payload in payloads:
        gateway.publish(topic, payload, qos=1).wait_for_publish(10)
    got = []
    for _ in payloads:
        try:
            got.append(decode_batch(received.get(timeout=10)))
        except queue.Empty:
            raise UplinkError(f"only {len(got)} of {len(payloads)} batches arrived") from None
    ok = sorted(got, key=lambda b: b.seq) == batches
    arrived = sum(len(b.readings) for b in got)
    _say(
        f"master received {len(got)} batches on {topic}: {arrived} readings, each batch "
        "decoded alone, " + ("all equal to the journal" if ok else "MISMATCH with the journal")
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
