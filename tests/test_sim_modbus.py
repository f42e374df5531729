"""Simulated Modbus meters: frames in, frames out; and pymodbus's own client on the pty."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client import ModbusSerialClient

from gateway.clock import ManualClock
from gateway.drivers import profiles
from gateway.drivers.profiles import Profile, parse_profile
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.modbus import (
    DataType,
    ModbusExceptionReply,
    ReadRequest,
    RegisterSpec,
    WordOrder,
    WriteReply,
    WriteRequest,
    decode_register,
    decode_reply,
    encode_request,
)
from gateway.protocols.modbus_plan import plan_reads
from gateway.protocols.quantities import Quantity
from gateway.sim.config import parse_sim_config
from gateway.sim.modbus_meter import ModbusMeter, crc16, encode_words
from gateway.sim.physics import ConstantLoad, MeterPhysics
from gateway.sim.service import Simulator

T0 = datetime(2024, 6, 1, 4, 0, tzinfo=UTC)
HOUR = 3600


def meter(
    name: str, *, watts: int = 2300, energy_wh: int = 12_345_678, unit: int = 7
) -> tuple[ModbusMeter, MeterPhysics]:
    profile = profiles.get(name)
    physics = MeterPhysics(
        meter_number="000000000007",
        load=ConstantLoad(watts),
        now=T0,
        energy_import_wh=energy_wh,
        has_relay=profile.relay is not None,
    )
    return ModbusMeter("m", unit, profile, physics, turnaround=0.01), physics


def ask(m: ModbusMeter, request: ReadRequest | WriteRequest, now: datetime = T0) -> object:
    reply = m.handle(encode_request(request), now)
    assert reply is not None
    return decode_reply(request, reply)


def read_all(m: ModbusMeter, now: datetime) -> dict[str, int]:
    """Read every register of the meter's profile the way a gateway would (planned)."""
    p = m.profile
    plan = plan_reads(
        p.registers, LineSettings(9600), turnaround=0.01, max_registers=p.max_registers
    )
    out = {}
    for planned in plan.requests:
        reply = ask(m, planned.request(m.unit, p.function_code), now)
        for spec in planned.registers:
            words = planned.words(reply.registers, spec)  # type: ignore[attr-defined]
            out[spec.quantity.name] = decode_register(spec, words, p.word_order)
    return out


# --- values --------------------------------------------------------------------------


@pytest.mark.parametrize("name", profiles.names())
def test_every_profile_reads_its_truth(name: str) -> None:
    m, physics = meter(name)
    now = T0.replace(hour=5)  # one hour of 2300 W
    got = read_all(m, now)
    truth = m.truth(now)
    assert got == truth["registers"]
    assert truth["energy_import_wh"] == 12_345_678 + 2300
    assert 0 <= truth["energy_import_wh"] - got["ENERGY_IMPORT"] < 10  # to the resolution
    assert got["POWER"] == 2300
    assert got["VOLTAGE_A"] == 2200
    assert got["FREQUENCY"] == 5000
    assert abs(got["CURRENT_A"] - physics.current_ma) <= 10  # 0.01 A registers round


def test_energy_register_wraps_at_its_maximum() -> None:
    # 999999.00 kWh + 10 kWh: the register passes 999999.99 and starts again from 0
    m, _ = meter("generic", watts=10_000, energy_wh=999_999_000)
    got = read_all(m, T0.replace(hour=5))
    assert got["ENERGY_IMPORT"] == 9_000
    reply = ask(m, ReadRequest(7, 3, 0, 2), T0.replace(hour=5))
    assert reply.registers == (0, 900)  # type: ignore[attr-defined]


def test_a_sixteen_bit_register_wraps_at_its_width() -> None:
    # ADW300 power: int16 in 0.001 kW; 40 kW does not fit and wraps to negative
    m, _ = meter("adw300", watts=40_000)
    assert read_all(m, T0)["POWER"] == 40_000 - 65_536


def test_little_word_order() -> None:
    data = {
        "name": "swapped",
        "manufacturer": "test",
        "model": "x",
        "function_code": 4,
        "max_registers": 10,
        "word_order": "little",
        "turnaround_ms": 5,
        "relay": "none",
        "registers": [
            {"quantity": "ENERGY_IMPORT", "address": 0, "type": "uint32", "unit": "Wh"},
            {"quantity": "POWER", "address": 2, "type": "float32", "unit": "W"},
        ],
    }
    profile = parse_profile(data)
    physics = MeterPhysics(
        meter_number="1", load=ConstantLoad(1500), now=T0, energy_import_wh=70_000,
        has_relay=False,
    )  # fmt: skip
    m = ModbusMeter("m", 9, profile, physics)
    reply = ask(m, ReadRequest(9, 4, 0, 4))
    low, high = reply.registers[:2]  # type: ignore[attr-defined]
    assert high * 65536 + low == 70_000
    assert read_all(m, T0) == {"ENERGY_IMPORT": 70_000, "POWER": 1500}


specs = st.sampled_from(
    [
        RegisterSpec(Quantity.ENERGY_IMPORT, 0, DataType.UINT32, "kWh", Fraction(1, 100)),
        RegisterSpec(Quantity.POWER, 0, DataType.INT32, "W"),
        RegisterSpec(Quantity.POWER, 0, DataType.INT16, "kW", Fraction(1, 1000)),
        RegisterSpec(Quantity.VOLTAGE_A, 0, DataType.UINT16, "V", Fraction(1, 10)),
        RegisterSpec(Quantity.POWER, 0, DataType.FLOAT32, "kW"),
        RegisterSpec(Quantity.CURRENT_A, 0, DataType.FLOAT32, "A", Fraction(1, 1000)),
    ]
)


@settings(max_examples=200, deadline=None)
@given(spec=specs, value=st.integers(-30_000, 30_000), order=st.sampled_from(list(WordOrder)))
def test_encode_words_is_the_inverse_of_decode_register(
    spec: RegisterSpec, value: int, order: WordOrder
) -> None:
    if spec.type in (DataType.UINT16, DataType.UINT32):
        value = abs(value)
    words = encode_words(spec, value, order)
    assert len(words) == spec.words
    decoded = decode_register(spec, words, order)
    resolution = spec.factor if spec.type is not DataType.FLOAT32 else 1
    if spec.quantity is Quantity.ENERGY_IMPORT:
        assert 0 <= value - decoded < resolution  # energy is truncated
    else:
        assert abs(decoded - value) <= resolution / 2


# --- refusals ------------------------------------------------------------------------


def exception_code(m: ModbusMeter, request: ReadRequest | WriteRequest) -> int:
    with pytest.raises(ModbusExceptionReply) as info:
        ask(m, request)
    return info.value.code


def test_exceptions() -> None:
    m, _ = meter("ddsu666")  # FC03, 0x2000..0x200F and 0x4000..0x400B, at most 40
    assert exception_code(m, ReadRequest(7, 3, 0x0000, 2)) == 2  # nothing there
    assert exception_code(m, ReadRequest(7, 3, 0x4000, 41)) == 3  # more than it serves
    assert exception_code(m, ReadRequest(7, 4, 0x2000, 2)) == 2  # not an input register
    body = bytes([7, 0x07])  # read exception status: not served
    refused = _frame(m, body)
    assert refused[:3] == bytes([7, 0x87, 0x01])  # exception 01 ILLEGAL FUNCTION
    assert crc16(refused[:3]) == refused[3:]
    # a read across the gap between two registers is served (gaps read 0)
    reply = ask(m, ReadRequest(7, 3, 0x2000, 16))
    assert reply.registers[6:10] == (0, 0, 0, 0)  # type: ignore[attr-defined]


def _frame(m: ModbusMeter, body: bytes) -> bytes:
    reply = m.handle(body + crc16(body), T0)
    assert reply is not None
    return reply


def test_frames_not_for_this_meter_get_nothing() -> None:
    m, _ = meter("generic")
    frame = encode_request(ReadRequest(7, 3, 0, 2))
    assert m.handle(encode_request(ReadRequest(8, 3, 0, 2)), T0) is None  # another unit
    assert m.handle(frame[:-1] + bytes([frame[-1] ^ 0xFF]), T0) is None  # bad CRC
    broadcast_read = bytes([0, 3, 0, 0, 0, 2])
    assert m.handle(broadcast_read + crc16(broadcast_read), T0) is None


# --- relays --------------------------------------------------------------------------


def test_coil_relay_stops_energy_and_reads_back() -> None:
    m, physics = meter("generic")
    assert ask(m, WriteRequest(7, 5, 0, 0)) == WriteReply(7, 5, 0, 0)
    assert physics.relay_closed is False
    coil = bytes([7, 1, 0, 0, 0, 1])
    assert _frame(m, coil)[:4] == bytes([7, 1, 1, 0])  # FC01: coil 0 is off
    energy = m.truth(T0)["energy_import_wh"]
    later = T0.replace(hour=9)
    truth = m.truth(later)
    assert (truth["energy_import_wh"], truth["power_w"]) == (energy, 0)
    ask(m, WriteRequest(7, 5, 0, 1), later)
    assert m.truth(later.replace(hour=10))["energy_import_wh"] == energy + 2300
    assert exception_code(m, WriteRequest(7, 5, 1, 0)) == 2  # no such coil
    assert exception_code(m, WriteRequest(7, 6, 0, 1)) == 2  # no writable register


def test_holding_register_relay() -> None:
    m, physics = meter("adw300")  # 0x0057: 0x5555 close, 0xAAAA trip
    ask(m, WriteRequest(7, 6, 0x57, 0xAAAA))
    assert physics.relay_closed is False
    assert ask(m, ReadRequest(7, 3, 0x57, 1)).registers == (0xAAAA,)  # type: ignore[attr-defined]
    assert exception_code(m, WriteRequest(7, 6, 0x57, 0x1234)) == 3
    assert exception_code(m, WriteRequest(7, 5, 0x57, 1)) == 1  # it has no coils
    ask(m, WriteRequest(7, 6, 0x57, 0x5555))
    assert physics.relay_closed is True


@pytest.mark.parametrize("name", ["sdm120", "sdm630", "ddsu666", "dtsu666"])
def test_meters_without_a_relay_refuse_relay_writes(name: str) -> None:
    m, physics = meter(name)
    assert exception_code(m, WriteRequest(7, 5, 0, 0)) == 1
    assert exception_code(m, WriteRequest(7, 6, 0, 0)) == 2
    assert physics.relay_closed is True


def test_broadcast_write_acts_without_answer() -> None:
    m, physics = meter("generic")
    body = bytes([0, 5, 0, 0, 0, 0])
    assert m.handle(body + crc16(body), T0) is None
    assert physics.relay_closed is False


def test_profile_relay_and_physics_must_agree() -> None:
    profile: Profile = profiles.get("sdm120")
    physics = MeterPhysics(meter_number="1", load=ConstantLoad(0), now=T0, has_relay=True)
    with pytest.raises(ValueError, match="relay"):
        ModbusMeter("m", 1, profile, physics)


# --- pymodbus's client on the pty ----------------------------------------------------

BENCH = """
buses:
  - {name: b, link: modbus, protocol: modbus, baud: 19200, parity: N}
meters:
  - {id: sdm, bus: b, unit_id: 1, profile: sdm120, energy_import_wh: 152300,
     load: {kind: constant, watts: 800}}
  - {id: adw, bus: b, unit_id: 2, profile: adw300, energy_import_wh: 4567890,
     load: {kind: constant, watts: 12000}, phases: 3}
  - {id: gen, bus: b, unit_id: 3, profile: generic, energy_import_wh: 45000,
     load: {kind: constant, watts: 350}}
  - {id: pv, bus: b, unit_id: 4, profile: generic, energy_export_wh: 8000,
     load: {kind: constant, watts: -1500}}
"""


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[tuple[Simulator, ManualClock, ModbusSerialClient]]:
    clock = ManualClock(T0)
    config = parse_sim_config(BENCH, "bench.yaml", link_dir=str(tmp_path))
    with Simulator(config, clock) as sim:
        # pyserial cannot set even parity on a pty; pymodbus opens it 8N1
        client = ModbusSerialClient(
            sim.bus("b").path, baudrate=19200, parity="N", timeout=1, retries=0
        )
        assert client.connect()
        try:
            yield sim, clock, client
        finally:
            client.close()
        assert sim.bus("b").counters.collisions == 0


def settle() -> None:
    time.sleep(0.004)  # pymodbus's sync client does not itself keep the t3.5 gap


def read_with_pymodbus(client: ModbusSerialClient, profile: Profile, unit: int) -> dict[str, int]:
    plan = plan_reads(
        profile.registers, LineSettings(19200), turnaround=0.02, max_registers=profile.max_registers
    )
    read = (
        client.read_input_registers if profile.function_code == 4 else client.read_holding_registers
    )
    out = {}
    for planned in plan.requests:
        response = read(planned.start, count=planned.count, device_id=unit)
        settle()
        assert not response.isError(), response
        for spec in planned.registers:
            words = planned.words(response.registers, spec)
            out[spec.quantity.name] = decode_register(spec, words, profile.word_order)
    return out


def test_pymodbus_reads_the_truth(
    bench: tuple[Simulator, ManualClock, ModbusSerialClient],
) -> None:
    sim, clock, client = bench
    clock.advance(1800)
    truth = sim.truth()["meters"]
    for meter_id, name, unit in [("sdm", "sdm120", 1), ("adw", "adw300", 2), ("gen", "generic", 3)]:
        got = read_with_pymodbus(client, profiles.get(name), unit)
        assert got == truth[meter_id]["registers"], meter_id
    assert truth["sdm"]["energy_import_wh"] == 152_300 + 400
    assert truth["adw"]["registers"]["ENERGY_IMPORT"] == 4_573_890  # 10 Wh steps: exact here
    response = client.read_holding_registers(0x0100, count=2, device_id=2)
    assert response.isError() and response.exception_code == 2
    settle()


def pymodbus_value(
    client: ModbusSerialClient, profile: Profile, unit: int, quantity: Quantity
) -> int | float:
    """One register read and converted by pymodbus alone (its DATATYPE, the profile's word
    order), raw: no scale of ours applied."""
    spec = next(r for r in profile.registers if r.quantity is quantity)
    datatype = {
        DataType.FLOAT32: client.DATATYPE.FLOAT32,
        DataType.INT32: client.DATATYPE.INT32,
        DataType.UINT32: client.DATATYPE.UINT32,
    }[spec.type]
    read = (
        client.read_input_registers if profile.function_code == 4 else client.read_holding_registers
    )
    response = read(spec.address, count=2, device_id=unit)
    settle()
    assert not response.isError(), response
    order = "big" if profile.word_order is WordOrder.BIG else "little"
    value = client.convert_from_registers(response.registers, datatype, word_order=order)
    assert isinstance(value, int | float)
    return value


def test_pymodbus_converts_the_truth_itself(
    bench: tuple[Simulator, ManualClock, ModbusSerialClient],
) -> None:
    """pymodbus's own float32/int32/uint32 conversion, compared with the physical truth
    (not with this project's decode_register)."""
    sim, clock, client = bench
    clock.advance(1800)
    truth = sim.truth()["meters"]
    sdm, adw, gen = profiles.get("sdm120"), profiles.get("adw300"), profiles.get("generic")
    # float32 (SDM120: W, V, Hz, kWh)
    assert pymodbus_value(client, sdm, 1, Quantity.POWER) == truth["sdm"]["power_w"] == 800
    assert pymodbus_value(client, sdm, 1, Quantity.VOLTAGE_A) == truth["sdm"]["voltage_dv"] / 10
    assert pymodbus_value(client, sdm, 1, Quantity.FREQUENCY) == pytest.approx(
        truth["sdm"]["frequency_chz"] / 100, abs=1e-5
    )
    kwh = pymodbus_value(client, sdm, 1, Quantity.ENERGY_IMPORT)
    assert truth["sdm"]["energy_import_wh"] == 152_300 + 400
    assert kwh == pytest.approx(152.7, abs=1e-4)  # float32 holds 152.7 to ~1e-5
    assert round(kwh * 1000) == truth["sdm"]["energy_import_wh"]
    # int32 (generic: power in W, signed; a generator feeding in reads negative)
    assert pymodbus_value(client, gen, 3, Quantity.POWER) == truth["gen"]["power_w"] == 350
    assert pymodbus_value(client, gen, 4, Quantity.POWER) == truth["pv"]["power_w"] == -1500
    # uint32 (0.01 kWh steps)
    assert (
        pymodbus_value(client, adw, 2, Quantity.ENERGY_IMPORT) * 10
        == (truth["adw"]["energy_import_wh"])
    )
    assert truth["adw"]["energy_import_wh"] == 4_567_890 + 6_000
    exported = pymodbus_value(client, gen, 4, Quantity.ENERGY_EXPORT)
    assert exported * 10 == truth["pv"]["energy_export_wh"] // 10 * 10 == 8_000 + 750


def test_pymodbus_relay_write_stops_energy(
    bench: tuple[Simulator, ManualClock, ModbusSerialClient],
) -> None:
    sim, clock, client = bench
    assert not client.write_coil(0, False, device_id=3).isError()
    settle()
    assert client.read_coils(0, count=1, device_id=3).bits[0] is False
    settle()
    assert not client.write_register(0x57, 0xAAAA, device_id=2).isError()
    settle()
    before = sim.truth()["meters"]
    clock.advance(2 * HOUR)
    after = sim.truth()["meters"]
    for meter_id in ("gen", "adw"):
        assert after[meter_id]["relay_closed"] is False
        assert after[meter_id]["power_w"] == 0
        assert after[meter_id]["energy_import_wh"] == before[meter_id]["energy_import_wh"]
    assert after["sdm"]["energy_import_wh"] == before["sdm"]["energy_import_wh"] + 1600
    assert read_with_pymodbus(client, profiles.get("generic"), 3)["POWER"] == 0
    response = client.write_coil(0, True, device_id=1)  # the SDM120 has no relay
    assert response.isError() and response.exception_code == 1
    settle()
    assert sim.bus("b").counters.transactions == 5  # coil, read coil, register, read, refusal


def test_control_actions() -> None:
    m, physics = meter("generic")
    later = T0.replace(hour=6)
    assert m.control("relay", {"closed": False, "now": later.isoformat()}) == {
        "relay_closed": False
    }
    assert physics.energy_import_wh == 12_345_678 + 2 * 2300  # integrated up to 'now' first
    swapped = m.control("swap", {"meter_number": "000000000042", "energy_import_wh": 5})
    assert swapped == {"meter_number": "000000000042", "energy_import_wh": 5}
    assert read_all(m, later)["ENERGY_IMPORT"] == 0  # 5 Wh: below the 10 Wh resolution
    assert m.control("drift", {"ppm": 50})["drift_ppm"] == 50
    with pytest.raises(ValueError, match="no control action 'dance'"):
        m.control("dance", {})
    with pytest.raises(ValueError, match="timezone-aware"):
        m.control("relay", {"now": "2024-06-01T12:00:00"})
