"""Modbus register decoding (exact integers) and RTU frames through pymodbus.

Every expected value below is worked out by hand in its comment: a float32 is
sign x mantissa x 2^(exponent - 127 - 23), with the 24-bit mantissa 0x800000 | the
low 23 bits.
"""

from __future__ import annotations

import contextlib
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.modbus import (
    EXCEPTION_NAMES,
    DataType,
    ModbusExceptionReply,
    ReadReply,
    ReadRequest,
    RegisterSpec,
    ReplyReader,
    WordOrder,
    WriteReply,
    WriteRequest,
    decode_register,
    decode_reply,
    decode_request,
    encode_exception,
    encode_reply,
    encode_request,
    ratio_factor,
    raw_value,
)
from gateway.protocols.quantities import Quantity

Q = Quantity
F32 = DataType.FLOAT32


def spec(q: Quantity, unit: str, type_: DataType = F32, scale: str = "1") -> RegisterSpec:
    return RegisterSpec(quantity=q, address=0, type=type_, unit=unit, scale=Fraction(scale))


# --- float32 -> exact integer ---------------------------------------------------------


def test_voltage_230_1_float32_is_2301_dv() -> None:
    # 0x4366 0x199A: sign 0, exponent 0x86 = 134, mantissa 0xE6199A = 15079834
    # value = 15079834 x 2^(134-127-23) = 15079834 / 65536 = 230.100006103515625 V
    # x10 dV/V = 2301.00006103515625 -> 2301 dV
    assert decode_register(spec(Q.VOLTAGE_A, "V"), [0x4366, 0x199A]) == 2301


def test_energy_12345_67_kwh_float32_is_wh() -> None:
    # 0x4640 0xE6AE: exponent 0x8C = 140, mantissa 0xC0E6AE = 12641966
    # value = 12641966 x 2^(140-150) = 12641966 / 1024 = 12345.669921875 kWh
    # x1000 Wh/kWh = 12345669.921875 -> 12345670 Wh
    assert decode_register(spec(Q.ENERGY_IMPORT, "kWh"), [0x4640, 0xE6AE]) == 12_345_670


def test_current_power_factor_frequency() -> None:
    # 5.123 A: 0x40A3 0xEF9E, mantissa 0xA3EF9E = 10743710, exponent 0x81 = 129
    # = 10743710 / 2^21 = 5.123000144958496 A -> x1000 = 5123.000145 -> 5123 mA
    assert decode_register(spec(Q.CURRENT_A, "A"), [0x40A3, 0xEF9E]) == 5123
    # 0.987: 0x3F7C 0xAC08, mantissa 0xFCAC08 = 16559112, exponent 0x7E = 126
    # = 16559112 / 2^24 = 0.98699998855 -> x1000 = 986.99998855 -> 987 milli
    assert decode_register(spec(Q.POWER_FACTOR, "1"), [0x3F7C, 0xAC08]) == 987
    # 50.01 Hz: 0x4248 0x0A3D, mantissa 0xC80A3D = 13109821, exponent 0x84 = 132
    # = 13109821 / 2^18 = 50.0099983215 Hz -> x100 = 5000.99983 -> 5001 cHz
    assert decode_register(spec(Q.FREQUENCY, "Hz"), [0x4248, 0x0A3D]) == 5001


def test_kw_float_scaled_to_watts() -> None:
    # DDSU666 power in kW: 1234.5 = 0x449A 0x5000 (mantissa 0x9A5000 = 10113024,
    # exponent 0x89 = 137: 10113024 / 2^13 = 1234.5 exactly) -> x1000 = 1234500 W
    assert decode_register(spec(Q.POWER, "kW"), [0x449A, 0x5000]) == 1_234_500


def test_scaled_float_dtsu666_voltage() -> None:
    # DTSU666 Ua is a float in 0.1 V: 2301.0 = 0x450F 0xD000 (mantissa 0x8FD000 =
    # 9424896, exponent 0x8A = 138: 9424896 / 2^12 = 2301 exactly)
    # x (1/10 V) x (10 dV/V) = 2301 dV
    assert decode_register(spec(Q.VOLTAGE_A, "V", scale="0.1"), [0x450F, 0xD000]) == 2301


def test_round_half_to_even() -> None:
    # 2.5 W = 0x4020 0x0000 (exact) -> 2 ; 3.5 W = 0x4060 0x0000 (exact) -> 4
    power = spec(Q.POWER, "W")
    assert decode_register(power, [0x4020, 0x0000]) == 2
    assert decode_register(power, [0x4060, 0x0000]) == 4
    # -2.5 W = 0xC020 0x0000 -> -2
    assert decode_register(power, [0xC020, 0x0000]) == -2


@pytest.mark.parametrize(
    "words",
    [
        [0x7FC0, 0x0000],  # quiet NaN
        [0x7F80, 0x0000],  # +infinity
        [0xFF80, 0x0000],  # -infinity
    ],
)
def test_nan_and_infinity_are_remote_errors(words: list[int]) -> None:
    with pytest.raises(RemoteProtocolError, match="not finite"):
        decode_register(spec(Q.VOLTAGE_A, "V"), words)


def test_wrong_word_count_is_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="needs 2 registers"):
        decode_register(spec(Q.VOLTAGE_A, "V"), [0x4366])


# --- integers, scales, word order -----------------------------------------------------


def test_integer_registers_with_scale() -> None:
    # uint32 0x0001 0xE240 = 0x1E240 = 123456 x 0.01 kWh = 1234.56 kWh = 1234560 Wh
    energy = spec(Q.ENERGY_IMPORT, "kWh", DataType.UINT32, "1/100")
    assert decode_register(energy, [0x0001, 0xE240]) == 1_234_560
    # int16 0xFC18 = 64536 - 65536 = -1000 x 0.001 = -1 -> -1000 milli
    pf = spec(Q.POWER_FACTOR, "1", DataType.INT16, "0.001")
    assert decode_register(pf, [0xFC18]) == -1000
    # int32 0xFFFF 0xFF38 = -200 W
    assert decode_register(spec(Q.POWER, "W", DataType.INT32), [0xFFFF, 0xFF38]) == -200
    # uint16 0x08FD = 2301 x 0.1 V = 230.1 V = 2301 dV
    volts = spec(Q.VOLTAGE_A, "V", DataType.UINT16, "0.1")
    assert decode_register(volts, [0x08FD]) == 2301
    # uint16 0xFFFF = 65535 (unsigned), int16 0xFFFF = -1
    assert raw_value([0xFFFF], DataType.UINT16, WordOrder.BIG) == 65535
    assert raw_value([0xFFFF], DataType.INT16, WordOrder.BIG) == -1


def test_little_word_order_swaps_words_not_bytes() -> None:
    # same 230.1 V as above, low word first: 0x199A 0x4366
    assert decode_register(spec(Q.VOLTAGE_A, "V"), [0x199A, 0x4366], WordOrder.LITTLE) == 2301
    # uint32 123456 = 0x0001_E240, low word first: 0xE240 0x0001
    energy = spec(Q.ENERGY_IMPORT, "kWh", DataType.UINT32, "1/100")
    assert decode_register(energy, [0xE240, 0x0001], WordOrder.LITTLE) == 1_234_560
    # read big-endian by mistake: 0xE2400001 = 3795845121 x 10 Wh: not the same
    assert decode_register(energy, [0xE240, 0x0001], WordOrder.BIG) == 37_958_451_210


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.sampled_from(list(DataType)))
@settings(max_examples=200, deadline=None)
def test_word_order_is_a_word_swap(hi: int, lo: int, type_: DataType) -> None:
    words = [hi, lo][: type_.words]
    try:
        big = raw_value(words, type_, WordOrder.BIG)
    except RemoteProtocolError:
        big = None
    try:
        little = raw_value(list(reversed(words)), type_, WordOrder.LITTLE)
    except RemoteProtocolError:
        little = None
    assert big == little


# --- CT and PT ratios -------------------------------------------------------------------


def test_ct_pt_ratio_applies_per_quantity() -> None:
    assert ratio_factor(Q.ENERGY_IMPORT, 40, 100) == 4000
    assert ratio_factor(Q.POWER, 40, 100) == 4000
    assert ratio_factor(Q.CURRENT_B, 40, 100) == 40
    assert ratio_factor(Q.VOLTAGE_C, 40, 100) == 100
    assert ratio_factor(Q.FREQUENCY, 40, 100) == 1
    assert ratio_factor(Q.POWER_FACTOR, 40, 100) == 1


def test_ct_pt_ratio_in_decoding() -> None:
    # 1234.56 kWh x CT 40 x PT 100 = 4938240 kWh = 4938240000 Wh
    energy = spec(Q.ENERGY_IMPORT, "kWh", DataType.UINT32, "1/100")
    assert decode_register(energy, [0x0001, 0xE240], ct=40, pt=100) == 4_938_240_000
    # 5.00 A (uint16 500 x 0.01) x CT 40 = 200 A = 200000 mA; PT does not touch current
    amps = spec(Q.CURRENT_A, "A", DataType.UINT16, "0.01")
    assert decode_register(amps, [500], ct=40, pt=100) == 200_000
    # 230.1 V x PT 100 = 23010 V = 230100 dV; CT does not touch voltage
    assert decode_register(spec(Q.VOLTAGE_A, "V"), [0x4366, 0x199A], ct=40, pt=100) == 230_100
    # 50.01 Hz: untouched by either ratio
    assert decode_register(spec(Q.FREQUENCY, "Hz"), [0x4248, 0x0A3D], ct=40, pt=100) == 5001


def test_ratio_rounds_once_after_multiplying() -> None:
    # 12345.669921875 kWh x 1000 Wh/kWh x CT 1000 = 12345669921.875 Wh -> 12345669922;
    # rounding to Wh first (12345670) and multiplying after would give 12345670000.
    energy = spec(Q.ENERGY_IMPORT, "kWh")
    assert decode_register(energy, [0x4640, 0xE6AE], ct=1000) == 12_345_669_922


def test_register_spec_refuses_what_it_cannot_convert() -> None:
    with pytest.raises(LocalProtocolError, match="cannot convert 'kWh' into dV"):
        spec(Q.VOLTAGE_A, "kWh")
    with pytest.raises(LocalProtocolError, match="scale"):
        spec(Q.VOLTAGE_A, "V", scale="0")
    with pytest.raises(LocalProtocolError, match="out of range"):
        RegisterSpec(Q.VOLTAGE_A, 0xFFFF, F32, "V")


# --- RTU frames --------------------------------------------------------------------------


def test_golden_read_request() -> None:
    # The SDM120 voltage read published by Eastron:
    # 01 unit, 04 read input registers, 0000 address, 0002 count, 71CB CRC (low byte first)
    request = ReadRequest(unit=1, function_code=4, address=0x0000, count=2)
    assert encode_request(request) == bytes.fromhex("01 04 0000 0002 71CB")
    assert decode_request(bytes.fromhex("01 04 0000 0002 71CB")) == request


def test_golden_exception_reply_is_named() -> None:
    # 01 unit, 84 = 04 | 0x80 (exception to FC04), 02 ILLEGAL DATA ADDRESS, C2C1 CRC
    frame = bytes.fromhex("01 84 02 C2C1")
    assert encode_exception(1, 4, 2) == frame
    request = ReadRequest(1, 4, 0x9000, 2)
    with pytest.raises(ModbusExceptionReply) as info:
        decode_reply(request, frame)
    assert (info.value.code, info.value.name) == (2, "ILLEGAL_DATA_ADDRESS")
    assert "ILLEGAL_DATA_ADDRESS" in str(info.value)
    assert isinstance(info.value, RemoteProtocolError)
    assert EXCEPTION_NAMES[0x06] == "SERVER_DEVICE_BUSY"


def test_reply_built_by_pymodbus_parses_back() -> None:
    # 01 unit, 04 fc, 04 byte count, 4366 199A = 230.1 V, CRC from pymodbus
    frame = encode_reply(ReadReply(1, 4, (0x4366, 0x199A)))
    assert frame[:7] == bytes.fromhex("01 04 04 4366 199A")
    assert len(frame) == 9
    reply = decode_reply(ReadRequest(1, 4, 0, 2), frame)
    assert reply == ReadReply(1, 4, (0x4366, 0x199A))
    assert decode_register(spec(Q.VOLTAGE_A, "V"), reply.registers) == 2301


def test_bad_crc_is_remote_error() -> None:
    frame = bytearray(encode_reply(ReadReply(1, 4, (0x4366, 0x199A))))
    frame[-1] ^= 0xFF
    with pytest.raises(RemoteProtocolError, match="bad CRC"):
        decode_reply(ReadRequest(1, 4, 0, 2), bytes(frame))
    body = bytearray(encode_reply(ReadReply(1, 4, (0x4366, 0x199A))))
    body[4] ^= 0x01  # one flipped bit in the data
    with pytest.raises(RemoteProtocolError, match="bad CRC"):
        decode_reply(ReadRequest(1, 4, 0, 2), bytes(body))


def test_wrong_count_truncation_and_strays() -> None:
    request = ReadRequest(1, 4, 0, 2)
    three = encode_reply(ReadReply(1, 4, (1, 2, 3)))
    with pytest.raises(RemoteProtocolError, match="asked for 2 registers"):
        decode_reply(request, three)
    good = encode_reply(ReadReply(1, 4, (1, 2)))
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode_reply(request, good[:-1])
    with pytest.raises(RemoteProtocolError, match="stray"):
        decode_reply(request, good + b"\x00")
    with pytest.raises(RemoteProtocolError, match="stray"):
        decode_reply(request, b"\xff" + good)


def test_reader_skips_noise_and_other_units() -> None:
    request = ReadRequest(7, 3, 0x2000, 2)
    reply = encode_reply(ReadReply(7, 3, (0x4366, 0x199A)))
    other = encode_reply(ReadReply(9, 3, (0, 0)))  # 9 bytes from unit 9: skipped
    reader = ReplyReader(request)
    stream = b"\x00" + other + reply
    results = [reader.feed(stream[i : i + 1]) for i in range(len(stream))]
    assert results[:-1] == [None] * (len(stream) - 1)
    assert results[-1] == ReadReply(7, 3, (0x4366, 0x199A))
    assert reader.dropped == 1 + len(other)


def test_relay_writes_round_trip() -> None:
    # FC05 coil 0 on: 01 05 0000 FF00 8C3A
    coil = WriteRequest(1, 5, 0x0000, 1)
    assert encode_request(coil) == bytes.fromhex("01 05 0000 FF00 8C3A")
    assert decode_reply(coil, encode_reply(WriteReply(1, 5, 0, 1))) == WriteReply(1, 5, 0, 1)
    # FC06 register 0x0057 <- 0xAAAA, echoed
    reg = WriteRequest(1, 6, 0x0057, 0xAAAA)
    frame = encode_request(reg)
    assert frame[:6] == bytes.fromhex("01 06 0057 AAAA")
    assert decode_request(frame) == reg
    with pytest.raises(RemoteProtocolError, match="does not match"):
        decode_reply(reg, encode_reply(WriteReply(1, 6, 0x0057, 0x5555)))


def test_requests_refuse_what_modbus_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError):
        ReadRequest(0, 4, 0, 2)  # broadcast cannot read
    with pytest.raises(LocalProtocolError):
        ReadRequest(1, 4, 0, 126)
    with pytest.raises(LocalProtocolError):
        ReadRequest(1, 6, 0, 1)
    with pytest.raises(LocalProtocolError):
        WriteRequest(1, 5, 0, 2)


registers_st = st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125)


@given(st.integers(1, 247), st.sampled_from([3, 4]), registers_st)
@settings(max_examples=100, deadline=None)
def test_read_reply_round_trip(unit: int, fc: int, registers: list[int]) -> None:
    frame = encode_reply(ReadReply(unit, fc, tuple(registers)))
    assert len(frame) == ReadRequest(unit, fc, 0, len(registers)).reply_size
    assert decode_reply(ReadRequest(unit, fc, 0, len(registers)), frame).registers == tuple(
        registers
    )


@given(st.binary(max_size=40), st.integers(1, 8))
@settings(max_examples=300, deadline=None)
def test_hostile_bytes_give_a_reply_or_remote_error(data: bytes, count: int) -> None:
    request = ReadRequest(1, 3, 0, count)
    for chunked in (False, True):
        reader = ReplyReader(request)
        try:
            if chunked:
                for i in range(len(data)):
                    reader.feed(data[i : i + 1])
            else:
                reader.feed(data)
        except RemoteProtocolError:
            pass
    with contextlib.suppress(RemoteProtocolError):
        decode_reply(request, data)
    with contextlib.suppress(RemoteProtocolError):
        decode_request(data)


@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=12))
@settings(max_examples=200, deadline=None)
def test_hostile_frames_with_valid_crc(unit: int, fc: int, body: bytes) -> None:
    from pymodbus.framer import FramerRTU

    payload = bytes([unit, fc]) + body
    frame = payload + FramerRTU.compute_CRC(payload).to_bytes(2, "big")
    for request in (ReadRequest(1, 3, 0, 2), WriteRequest(1, 6, 0, 1), WriteRequest(1, 5, 0, 1)):
        with contextlib.suppress(RemoteProtocolError):
            decode_reply(request, frame)
    with contextlib.suppress(RemoteProtocolError):
        decode_request(frame)
