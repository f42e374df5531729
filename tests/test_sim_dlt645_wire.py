"""Simulated DL/T 645 meters over a real pty: the PyPI ``dlt645`` client and our own
codec with pyserial both read what the truth says; relays, broadcast, read-address
and line timing on the wire (timing asserted only on the bus log)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dlt645
import pytest
import serial
from dlt645.service.clientsvc.client_service import MeterClientService

from gateway.clock import ManualClock
from gateway.protocols.dlt645 import (
    Event,
    Framer,
    NegativeReply,
    ReadReply,
    ReadRequest,
    RelayAction,
    RelayControl,
    RelayReply,
    decode_value,
    encode,
    reply_quantities,
)
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.quantities import Quantity
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator

SHOP, STORE = "000000220101", "000000220102"
# 23:59:00 in Shanghai: a minute before the meters' own midnight
START = datetime(2024, 12, 31, 15, 59, 0, tzinfo=UTC)
BENCH = f"""
buses:
  - {{name: d, link: dlt, protocol: dlt645, baud: 9600, parity: E}}
  - {{name: solo, link: solo, protocol: dlt645, baud: 9600, parity: E}}
meters:
  - {{id: shop, bus: d, address: "{SHOP}", energy_import_wh: 1204567, turnaround_ms: 20,
      load: {{kind: constant, watts: 800}}}}
  - {{id: store, bus: d, address: "{STORE}", energy_import_wh: 310020, turnaround_ms: 20,
      load: {{kind: constant, watts: 400}}, protect: true, preamble: 2}}
  - {{id: alone, bus: solo, address: "240101000001", turnaround_ms: 20}}
"""


@pytest.fixture(scope="module", autouse=True)
def quiet_dlt645() -> None:
    dlt645.disable_logging()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[tuple[Simulator, ManualClock]]:
    clock = ManualClock(START)
    config = parse_sim_config(BENCH, "bench.yaml", link_dir=str(tmp_path))
    with Simulator(config, clock) as sim:
        yield sim, clock


def gap() -> None:
    time.sleep(0.01)  # the master's silent gap (t3.5 is 4 ms at 9600 8E1); dlt645 keeps none


def their_client(sim: Simulator, address: str, bus: str = "d") -> MeterClientService:
    # pyserial cannot set even parity on a pty: open it 8N1 (design.md)
    client = MeterClientService.new_rtu_client(
        port=sim.bus(bus).path, baudrate=9600, databits=8, stopbits=1, parity="N", timeout=1.0
    )
    client.address = bytearray(bytes.fromhex(address)[::-1])  # low byte first on the wire
    return client


def kwh(wh: int) -> Decimal:
    return Decimal(wh // 10).scaleb(-2)  # XXXXXX.XX kWh


def test_dlt645_client_reads_the_truth(bench: tuple[Simulator, ManualClock]) -> None:
    sim, clock = bench
    clock.advance(30)
    client = their_client(sim, SHOP)
    try:
        readings = {}
        for name, call, di in [
            ("forward", client.read_00, 0x00010000),
            ("combined", client.read_00, 0x00000000),
            ("voltage", client.read_02, 0x02010100),
            ("power", client.read_02, 0x02030000),
            ("frequency", client.read_02, 0x02800002),
            ("number", client.read_04, 0x04000402),
        ]:
            item = call(di)
            assert item is not None, name
            readings[name] = item.value
            gap()
    finally:
        client.disconnect()
    truth = sim.truth("shop")["meters"]["shop"]
    assert truth["energy_import_wh"] == 1_204_567 + 800 * 30 // 3600
    assert Decimal(str(readings["forward"])) == kwh(truth["energy_import_wh"])
    assert Decimal(str(readings["combined"])) == kwh(truth["energy_import_wh"])
    assert Decimal(str(readings["voltage"])) == Decimal(truth["voltage_dv"]).scaleb(-1)
    assert Decimal(str(readings["power"])) == Decimal(truth["power_w"]).scaleb(-3)
    assert Decimal(str(readings["frequency"])) == Decimal(truth["frequency_chz"]).scaleb(-2)
    assert readings["number"] == truth["meter_number"] == SHOP
    assert sim.bus("d").counters.collisions == 0


class Wire:
    """Our codec over pyserial: one request, one decoded reply (or None)."""

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, 9600, timeout=0.3)

    def ask(self, event: Event) -> Event | None:
        self.port.write(encode(event, preamble=4))
        framer = Framer()
        while True:
            data = self.port.read(1)
            if not data:
                return None
            events = framer.feed(data)
            if events:
                gap()
                return events[0]

    def close(self) -> None:
        self.port.close()


@pytest.fixture
def wire(bench: tuple[Simulator, ManualClock]) -> Iterator[Wire]:
    w = Wire(bench[0].bus("d").path)
    yield w
    w.close()


def read(wire: Wire, address: str, di: int) -> ReadReply:
    reply = wire.ask(ReadRequest(address, di))
    assert isinstance(reply, ReadReply), reply
    return reply


def test_our_codec_reads_the_truth_and_the_midnight_freeze(
    bench: tuple[Simulator, ManualClock], wire: Wire
) -> None:
    sim, clock = bench
    clock.advance(120)  # past the meters' own 00:00 on 1 January
    values: dict[Quantity, int] = {}
    for di in (0x00010000, 0x02010100, 0x02020100, 0x02030000, 0x02800002, 0x02060000):
        values.update(reply_quantities(read(wire, STORE, di)))
    freeze = decode_value(0x05060101, read(wire, STORE, 0x05060101).data)
    when = decode_value(0x05060001, read(wire, STORE, 0x05060001).data)
    truth = sim.truth("store")["meters"]["store"]
    assert values[Quantity.ENERGY_IMPORT] == truth["energy_import_wh"] // 10 * 10
    assert values[Quantity.POWER] == truth["power_w"] == 400
    assert values[Quantity.VOLTAGE_A] == truth["voltage_dv"]
    assert values[Quantity.FREQUENCY] == truth["frequency_chz"]
    assert values[Quantity.POWER_FACTOR] == truth["power_factor_milli"]
    assert abs(values[Quantity.CURRENT_A] - truth["current_ma"]) < 1
    frozen = truth["daily_freezes"][0]
    assert frozen["at"] == "2025-01-01T00:00:00+08:00"
    assert when == datetime(2025, 1, 1, 0, 0)
    assert isinstance(freeze, dict)
    assert freeze["total"] == kwh(frozen["import_wh"])
    # 23:59:00 + 60 s of 400 W, frozen at the meter's midnight
    assert frozen["import_wh"] == 310_020 + 400 * 60 // 3600


def test_relay_over_the_wire(bench: tuple[Simulator, ManualClock], wire: Wire) -> None:
    sim, clock = bench
    deadline = datetime(2025, 1, 1, 0, 30)  # meter-local, naive
    trip = wire.ask(RelayControl(SHOP, RelayAction.TRIP, deadline))
    assert isinstance(trip, RelayReply)
    energy = sim.truth("shop")["meters"]["shop"]["energy_import_wh"]
    clock.advance(timedelta(hours=1))
    truth = sim.truth("shop")["meters"]["shop"]
    assert (truth["relay_closed"], truth["power_w"], truth["energy_import_wh"]) == (
        False,
        0,
        energy,
    )
    # status word 3 bit 4: relay open
    status = decode_value(0x04000503, read(wire, SHOP, 0x04000503).data)
    assert int(status) & 0x10  # type: ignore[call-overload]
    late = datetime(2025, 1, 1, 2, 0)
    allowed = wire.ask(RelayControl(SHOP, RelayAction.CLOSE_ALLOW, late))
    assert isinstance(allowed, RelayReply)
    assert sim.truth("shop")["meters"]["shop"]["relay_closed"] is False  # waits for the button
    assert sim.control("shop", "button", {})["closed"] is True
    assert sim.truth("shop")["meters"]["shop"]["relay_closed"] is True
    # the store is in protect mode: a trip is refused (DC, bit0 "other")
    refused = wire.ask(RelayControl(STORE, RelayAction.TRIP, late))
    assert isinstance(refused, NegativeReply)
    assert sim.truth("store")["meters"]["store"]["relay_closed"] is True


def test_broadcast_time_gets_no_answer(bench: tuple[Simulator, ManualClock]) -> None:
    sim, _ = bench
    client = their_client(sim, SHOP)
    try:
        assert client.broadcast_time_sync(datetime(2024, 12, 31, 23, 59, 10))
        time.sleep(0.2)
    finally:
        client.disconnect()
    bus = sim.bus("d")
    assert [(e.direction, e.result) for e in bus.entries()] == [("request", "broadcast")]
    assert bus.counters.broadcasts == 1 and bus.counters.transactions == 0


def test_read_address_collides_on_a_shared_bus_and_works_alone(
    bench: tuple[Simulator, ManualClock],
) -> None:
    sim, _ = bench
    shared = their_client(sim, SHOP)
    alone = their_client(sim, "000000000000", bus="solo")
    try:
        shared.client.timeout = 0.3
        assert shared.read_address() is None  # both meters answer the wildcard: garbled
        item = alone.read_address()
    finally:
        shared.disconnect()
        alone.disconnect()
    assert item is not None
    assert bytes.fromhex(item.value)[::-1].hex() == "240101000001"  # dlt645 shows wire order
    request = sim.bus("d").entries()[0]
    assert (request.result, sorted(request.meta["answering"])) == ("collision", ["shop", "store"])


def test_dlt645_transaction_time_follows_the_formula(
    bench: tuple[Simulator, ManualClock], wire: Wire
) -> None:
    sim, _ = bench
    for _ in range(5):
        read(wire, SHOP, 0x00010000)
    line = LineSettings(9600, 8, "E", 1)
    entries = sim.bus("d").entries()
    measured = []
    for request, reply in zip(entries[::2], entries[1::2], strict=True):
        assert (request.direction, reply.direction) == ("request", "reply")
        assert request.nbytes == 4 + 16  # FE FE FE FE + the read frame
        assert reply.nbytes == 20  # 68 A0..A5 68 91 08 DI(4) XXXXXX.XX CS 16
        formula = line.transaction_time(request.nbytes, reply.nbytes, 0.020)
        measured.append(reply.end - request.start + line.modbus_gap)
        assert min(measured) >= formula * 0.999
    assert abs(sorted(measured)[2] - formula) <= 0.10 * formula
