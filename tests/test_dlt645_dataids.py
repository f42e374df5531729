"""DL/T 645 data identifiers: exact values from BCD, blocks, status bits, dates; quantities."""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.dlt645 import (
    DATA_IDS,
    ReadReply,
    StatusWord3,
    UnknownDataId,
    decode_frame,
    decode_value,
    encode_value,
    find,
    quantities,
    reply_quantities,
)
from gateway.protocols.dlt645.dataids import Block, Number
from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.quantities import Quantity

D = Decimal


@pytest.mark.parametrize(
    ("di", "data", "value"),
    [
        # XXXXXX.XX kWh, signed: 67 45 23 01 low first
        (0x00000000, "67452301", D("12345.67")),
        # the sign is bit 7 of the top byte
        (0x00000000, "45230180", D("-123.45")),
        # forward active tariff 3 at the 12th last settlement day
        (0x0001030C, "99999999", D("999999.99")),
        # XXX.X V: 01 22
        (0x02010100, "0122", D("220.1")),
        # XXX.XXX A, signed: 00 50 80 -> top byte 80 is the sign, digits 005000
        (0x02020200, "005080", D("-5.000")),
        (0x02020100, "452301", D("12.345")),
        # XX.XXXX kW, signed: 45 23 81 -> -1.2345
        (0x02030000, "452381", D("-1.2345")),
        # X.XXX, signed: 87 09 -> 0.987; with the sign bit -> -0.987
        (0x02060000, "8709", D("0.987")),
        (0x02060100, "8789", D("-0.987")),
        # XX.XX Hz
        (0x02800002, "0050", D("50.00")),
        # XXX.X °C, signed
        (0x02800007, "5082", D("-25.0")),
        # NNNNNNNN minutes: an integer, no decimals
        (0x0280000A, "78563412", 12345678),
        # remaining money, XXXXXX.XX yuan
        (0x00900200, "00500000", D("50.00")),
        # reverse (export) active energy, total, XXXXXX.XX kWh unsigned: bytes low first
        # 78 56 34 12 -> digits 12 34 56 78 -> 123456.78
        (0x00020000, "78563412", D("123456.78")),
        # overdrawn money (透支金额), XXXXXX.XX yuan: 34 12 00 00 -> 00001234 -> 12.34
        (0x00900201, "34120000", D("12.34")),
        # CT ratio NNNNNN
        (0x04000306, "000100", 100),
        # meter number: 6 BCD bytes, a string high digit first
        (0x04000402, "129078563412", "123456789012"),
        # date YYMMDDWW sent WW DD MM YY; 2026-11-22 is a Sunday (WW 00)
        (0x04000101, "00221126", date(2026, 11, 22)),
        # time hhmmss sent ss mm hh
        (0x04000102, "595923", time(23, 59, 59)),
        # last daily freeze time YYMMDDhhmm sent mm hh DD MM YY
        (0x05060001, "0000221126", datetime(2026, 11, 22, 0, 0)),
        # 62nd last daily freeze time
        (0x0506003E, "0000210926", datetime(2026, 9, 21, 0, 0)),
        # asset code: 32 ASCII, low byte first (so reversed), NUL padded
        (0x04000403, (b"\x00" * 26 + b"ABC123")[::-1].hex(), "ABC123"),
        # settlement day 1: DDhh sent hh DD
        (0x04000B01, "0001", {"hour": 0, "day": 1}),
    ],
)
def test_golden_values(di: int, data: str, value: object) -> None:
    raw = bytes.fromhex(data)
    decoded = decode_value(di, raw)
    assert decoded == value
    assert type(decoded) is type(value)
    assert encode_value(di, decoded) == raw


def test_decimals_keep_their_exponent() -> None:
    value = decode_value(0x00010000, bytes.fromhex("00000000"))
    assert str(value) == "0.00"
    assert str(decode_value(0x02020100, bytes.fromhex("000000"))) == "0.000"


def test_forward_block_into_parts() -> None:
    data = bytes.fromhex("0000010000100000002000000030000000400000")
    assert decode_value(0x0001FF00, data) == {
        "total": D("100.00"),
        "t1": D("10.00"),
        "t2": D("20.00"),
        "t3": D("30.00"),
        "t4": D("40.00"),
    }


def test_forward_block_at_the_last_settlement_day() -> None:
    # 0001FF01: forward active energy, total and tariffs, at the last (-1) settlement
    # day; five XXXXXX.XX kWh parts of 4 bytes, each low byte first:
    data = bytes.fromhex(
        "00001500"  # total 00 00 15 00 -> 00150000 -> 1500.00
        "00500200"  # t1 (sharp)  -> 00025000 -> 250.00
        "00000500"  # t2 (peak)   -> 00050000 -> 500.00
        "00000600"  # t3 (flat)   -> 00060000 -> 600.00
        "00500100"  # t4 (valley) -> 00015000 -> 150.00; 250+500+600+150 = 1500
    )
    value = decode_value(0x0001FF01, data)
    assert value == {
        "total": D("1500.00"),
        "t1": D("250.00"),
        "t2": D("500.00"),
        "t3": D("600.00"),
        "t4": D("150.00"),
    }
    assert isinstance(value, dict) and [str(v) for v in value.values()] == [
        "1500.00",
        "250.00",
        "500.00",
        "600.00",
        "150.00",
    ]
    assert encode_value(0x0001FF01, value) == data
    # a settlement-day block is history, not a present reading: no quantity
    assert quantities(0x0001FF01, value) == {}


def test_block_of_a_meter_with_fewer_tariffs_has_fewer_parts() -> None:
    data = bytes.fromhex("0000010000100000")
    assert decode_value(0x0001FF00, data) == {"total": D("100.00"), "t1": D("10.00")}


def test_last_daily_freeze_block_and_voltage_block() -> None:
    freeze = decode_value(0x05060101, bytes.fromhex("67452301" + "00000000" * 4))
    assert isinstance(freeze, dict) and freeze["total"] == D("12345.67") and len(freeze) == 5
    volts = decode_value(0x0201FF00, bytes.fromhex("012299210022"))
    assert volts == {"a": D("220.1"), "b": D("219.9"), "c": D("220.0")}


def test_status_word_3_names_relay_and_protect_bits() -> None:
    word = decode_value(0x04000503, bytes.fromhex("D010"))  # bits 4, 6, 7, 12
    assert isinstance(word, StatusWord3)
    assert StatusWord3.RELAY_OPEN in word
    assert StatusWord3.RELAY_COMMAND_OPEN in word
    assert StatusWord3.PRE_TRIP_ALARM in word
    assert StatusWord3.PROTECT_MODE in word
    assert StatusWord3.PREPAID_MONEY not in word
    assert decode_value(0x04000503, bytes.fromhex("0002")) == StatusWord3.PREPAID_MONEY
    assert int(decode_value(0x04000503, bytes.fromhex("00C0"))) == 0xC000  # unknown bits kept


@pytest.mark.parametrize(
    ("di", "data"),
    [
        (0x00000000, "6745230A"),  # nibble A is not BCD
        (0x00000000, "674523"),  # too short
        (0x02010100, "012200"),  # too long
        (0x00010000, "000000F0"),  # nibble F
        (0x0001FF00, "00000100001000"),  # not a whole number of parts
        (0x04000101, "07221126"),  # weekday 7
        (0x04000101, "00311126"),  # 31 November
        (0x04000102, "006024"),  # 24:60:00
        (0x05060001, "0000001326"),  # month 13, day 0
        (0x04000402, "1290785634AB"),  # meter number not digits
        (0x04000403, "FE" * 32),  # not ASCII
        (0x12345678, "00"),  # DI unknown
    ],
)
def test_malformed_values_are_remote_protocol_errors(di: int, data: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_value(di, bytes.fromhex(data))


def test_unknown_di_is_its_own_error() -> None:
    with pytest.raises(UnknownDataId):
        decode_value(0x12345678, b"")
    assert find(0x12345678) is None
    assert find(0x00010000) is not None


@pytest.mark.parametrize(
    ("di", "value"),
    [
        (0x00010000, D("1.001")),  # three decimals in XXXXXX.XX
        (0x00010000, D("1000000.00")),  # too big
        (0x00010000, D("-1.00")),  # negative in an unsigned format
        (0x00000000, D("800000.00")),  # a signed top digit cannot exceed 7
        (0x00010000, 1.5),  # float
        (0x00010000, True),  # bool is not a number here
        (0x0001FF00, {"t1": D("1.00")}),  # parts must start with total
        (0x04000101, datetime(2026, 1, 1)),  # a date, not a datetime
        (0x04000102, time(1, 2, 3, 4)),  # microseconds
        (0x05060001, datetime(2026, 1, 1, 0, 0, 1)),  # freeze times have no seconds
        (0x04000402, "12345"),  # meter number needs 12 digits
        (0x04000403, "x" * 33),  # too long
        (0x04000503, 1 << 16),  # status word of 3 bytes
        (0x12345678, 0),  # unknown DI
    ],
)
def test_unencodable_values_are_local_protocol_errors(di: int, value: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode_value(di, value)  # type: ignore[arg-type]


def test_table_has_the_domain_identifiers() -> None:
    for di in (
        0x00000000,
        0x00010000,
        0x00010100,
        0x00010400,
        0x0001FF00,
        0x00020000,
        0x02010100,
        0x0201FF00,
        0x02020100,
        0x02030000,
        0x02060000,
        0x02800002,
        0x04000101,
        0x04000102,
        0x04000503,
        0x00900200,
        0x00900201,
        0x05060001,
        0x05060101,
        0x0001FF01,
        0x04000402,
        0x04000403,
    ):
        assert di in DATA_IDS, f"{di:08X}"
    assert DATA_IDS[0x02010100].unit == "V"
    assert DATA_IDS[0x00000000].format == Number(8, 2, signed=True)
    assert isinstance(DATA_IDS[0x0001FF01].format, Block)


numbers = sorted(
    (e.di for e in DATA_IDS.values() if isinstance(e.format, Number)),
)


@given(st.sampled_from(numbers), st.data())
def test_numbers_round_trip_through_bcd(di: int, data: st.DataObject) -> None:
    fmt = DATA_IDS[di].format
    assert isinstance(fmt, Number)
    limit = 10**fmt.digits - 1
    if fmt.signed:
        limit = min(limit, 8 * 10 ** (fmt.digits - 1) - 1)  # the top digit has 3 bits
    n = data.draw(st.integers(-limit if fmt.signed else 0, limit))
    value = D(n).scaleb(-fmt.decimals) if fmt.decimals else n
    raw = encode_value(di, value)
    assert len(raw) == fmt.size
    assert decode_value(di, raw) == value


@given(st.sampled_from(sorted(DATA_IDS)), st.binary(max_size=40))
def test_any_bytes_give_a_value_or_a_remote_protocol_error(di: int, raw: bytes) -> None:
    try:
        value = decode_value(di, raw)
    except RemoteProtocolError:
        return
    assert decode_value(di, encode_value(di, value)) == value


# --- quantities ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("di", "data", "expected"),
    [
        (0x00000000, "67452301", {Quantity.ENERGY_COMBINED: 12_345_670}),  # kWh -> Wh
        (0x00010000, "99999999", {Quantity.ENERGY_IMPORT: 999_999_990}),
        (0x00020000, "01000000", {Quantity.ENERGY_EXPORT: 10}),  # 0.01 kWh = 10 Wh
        (0x00020000, "78563412", {Quantity.ENERGY_EXPORT: 123_456_780}),  # 123456.78 kWh
        (0x00900201, "34120000", {}),  # overdrawn money is money, not a quantity
        (0x02010100, "0122", {Quantity.VOLTAGE_A: 2201}),  # V -> dV
        (0x02020300, "005080", {Quantity.CURRENT_C: -5_000}),  # A -> mA
        (0x02030000, "452381", {Quantity.POWER: -1234}),  # -1234.5 W -> -1234 (half even)
        (0x02030000, "550300", {Quantity.POWER: 36}),  # 35.5 W -> 36 (half even)
        (0x02030000, "550200", {Quantity.POWER: 26}),  # 25.5 W -> 26 (half even)
        (0x02030000, "450200", {Quantity.POWER: 24}),  # 24.5 W -> 24 (half even)
        (0x02060000, "8709", {Quantity.POWER_FACTOR: 987}),  # -> milli
        (0x02800002, "0050", {Quantity.FREQUENCY: 5000}),  # Hz -> cHz
        (0x04000102, "000010", {}),  # a time is no quantity
    ],
)
def test_quantities_in_integer_units(di: int, data: str, expected: dict[Quantity, int]) -> None:
    assert quantities(di, decode_value(di, bytes.fromhex(data))) == expected


def test_block_quantities_and_reply_helper() -> None:
    frame = bytes.fromhex(
        "68 12 90 78 56 34 12 68 91 18 33 32 34 33"
        " 33 33 34 33 33 43 33 33 33 53 33 33 33 63 33 33 33 73 33 33 98 16"
    )
    reply = decode_frame(frame)
    assert isinstance(reply, ReadReply)
    assert reply_quantities(reply) == {
        Quantity.ENERGY_IMPORT: 100_000,
        Quantity.ENERGY_T1: 10_000,
        Quantity.ENERGY_T2: 20_000,
        Quantity.ENERGY_T3: 30_000,
        Quantity.ENERGY_T4: 40_000,
    }
    volts = decode_value(0x0201FF00, bytes.fromhex("012299210022"))
    assert quantities(0x0201FF00, volts) == {
        Quantity.VOLTAGE_A: 2201,
        Quantity.VOLTAGE_B: 2199,
        Quantity.VOLTAGE_C: 2200,
    }
