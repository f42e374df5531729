"""DL/T 645-2007 frames: golden frames field by field, round trips, hostile bytes."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.dlt645 import (
    BROADCAST_ADDRESS,
    BroadcastTime,
    ChangeBaudReply,
    ChangeBaudRequest,
    ErrorBits,
    Event,
    Framer,
    FreezeReply,
    FreezeRequest,
    NegativeReply,
    RawFrame,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUp,
    ReadFollowUpReply,
    ReadReply,
    ReadRequest,
    RelayAction,
    RelayControl,
    RelayReply,
    SecureRelayControl,
    UnknownFrame,
    WriteReply,
    WriteRequest,
    build_raw,
    decode_frame,
    encode,
    parse_raw,
)
from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError

METER = "123456789012"


def h(*fields: str) -> bytes:
    """Hex fields of a golden frame, one field per argument."""
    return bytes.fromhex("".join(fields))


def roundtrip(frame: bytes, event: Event) -> None:
    """Parse, build and size together: the frame decodes to the event and back."""
    assert decode_frame(frame) == event
    assert encode(event) == frame
    assert len(frame) == 12 + frame[9]  # 68, address, 68, C, L, DATA (L bytes), CS, 16
    assert sum(frame[:-2]) & 0xFF == frame[-2]


# --- the worked examples of domain.md ---------------------------------------------


def test_read_combined_energy_request() -> None:
    frame = h(
        "68",  # start
        "129078563412",  # address 123456789012, low byte first
        "68",  # start again
        "11",  # C: read data
        "04",  # L: 4 data bytes
        "33333333",  # DI 00000000 (DI0 first), each byte +33
        "67",  # CS: sum from the first 68 through DATA, mod 256
        "16",  # end
    )
    roundtrip(frame, ReadRequest(METER, 0x00000000))


def test_read_combined_energy_reply() -> None:
    frame = h(
        "68",
        "129078563412",  # address 123456789012
        "68",
        "91",  # C: reply to a read, from the meter, no error, no follow-up
        "08",  # L: DI (4) + XXXXXX.XX (4)
        "33333333",  # DI 00000000
        "9A785634",  # 67 45 23 01 +33: 012345.67 kWh, low byte first
        "87",  # CS
        "16",
    )
    roundtrip(frame, ReadReply(METER, 0x00000000, bytes.fromhex("67452301")))


def test_read_voltage_a_request() -> None:
    frame = h(
        "68",
        "129078563412",
        "68",
        "11",  # read
        "04",
        "33343435",  # DI 02010100 sent as 00 01 01 02, +33
        "6B",  # CS
        "16",
    )
    roundtrip(frame, ReadRequest(METER, 0x02010100))


def test_read_voltage_a_reply() -> None:
    frame = h(
        "68",
        "129078563412",
        "68",
        "91",  # read reply
        "06",  # L: DI (4) + XXX.X (2)
        "33343435",  # DI 02010100
        "3455",  # 01 22 +33: 220.1 V, low byte first
        "76",  # CS
        "16",
    )
    roundtrip(frame, ReadReply(METER, 0x02010100, bytes.fromhex("0122")))


def test_read_address_wildcard_request() -> None:
    frame = h(
        "68",
        "AAAAAAAAAAAA",  # wildcard: the one meter on the line answers
        "68",
        "13",  # read address
        "00",  # no data
        "DF",  # CS
        "16",
    )
    roundtrip(frame, ReadAddressRequest())


# --- more golden frames -------------------------------------------------------------


def test_read_address_reply() -> None:
    frame = h(
        "68",
        "129078563412",  # the meter's own address
        "68",
        "93",  # read-address reply
        "06",
        "45C3AB896745",  # 12 90 78 56 34 12 +33: the address again, in the data
        "07",  # CS
        "16",
    )
    roundtrip(frame, ReadAddressReply(METER))


def test_negative_energy_reply_sets_the_sign_bit() -> None:
    frame = h(
        "68",
        "129078563412",
        "68",
        "91",
        "08",
        "33333333",  # DI 00000000 (signed format)
        "785634B3",  # 45 23 01 80 +33: bit 7 of the top byte = minus, -123.45 kWh
        "A0",  # CS
        "16",
    )
    roundtrip(frame, ReadReply(METER, 0, bytes.fromhex("45230180")))


def test_block_reply_with_more_frames_following() -> None:
    frame = h(
        "68",
        "129078563412",
        "68",
        "B1",  # read reply, bit 5: more frames follow
        "18",  # L = 24: DI + 5 × XXXXXX.XX
        "33323433",  # DI 0001FF00 sent 00 FF 01 00, +33
        "33333433",  # total 100.00 kWh (00 00 01 00)
        "33433333",  # t1 10.00
        "33533333",  # t2 20.00
        "33633333",  # t3 30.00
        "33733333",  # t4 40.00
        "B8",  # CS
        "16",
    )
    data = bytes.fromhex("0000010000100000002000000030000000400000")
    roundtrip(frame, ReadReply(METER, 0x0001FF00, data, more=True))


def test_follow_up_request_and_reply() -> None:
    request = h(
        "68",
        "129078563412",
        "68",
        "12",  # read follow-up
        "05",
        "33323433",  # DI 0001FF00
        "34",  # SEQ 1
        "9D",  # CS
        "16",
    )
    roundtrip(request, ReadFollowUp(METER, 0x0001FF00, 1))
    reply = h(
        "68",
        "129078563412",
        "68",
        "92",  # follow-up reply, last frame
        "09",
        "33323433",  # DI
        "33433333",  # data: 00 10 00 00
        "34",  # SEQ 1
        "FD",  # CS
        "16",
    )
    roundtrip(reply, ReadFollowUpReply(METER, 0x0001FF00, bytes.fromhex("00100000"), 1))


def test_load_curve_read_with_block_count_and_start() -> None:
    frame = h(
        "68",
        "129078563412",
        "68",
        "11",
        "0A",  # L = 10: DI, N, mm hh DD MM YY
        "34333339",  # DI 06000001
        "34",  # N = 1 record
        "4833554459",  # 15 00 22 11 26: from 2026-11-22 00:15
        "15",  # CS
        "16",
    )
    roundtrip(frame, ReadRequest(METER, 0x06000001, 1, datetime(2026, 11, 22, 0, 15)))


def test_write_time_request_and_reply() -> None:
    request = h(
        "68",
        "129078563412",
        "68",
        "14",  # write data
        "0F",  # L = 15
        "35343337",  # DI 04000102 (time)
        "35",  # PA: password level 02
        "896745",  # password 123456, low byte first
        "AB896745",  # operator code 12345678, low byte first
        "333343",  # 00 00 10: 10:00:00 sent ss mm hh
        "6F",  # CS
        "16",
    )
    event = WriteRequest(METER, 0x04000102, bytes.fromhex("000010"), 2, "123456", "12345678")
    roundtrip(request, event)
    reply = h("68", "129078563412", "68", "94", "00", "1A", "16")  # write accepted, no data
    roundtrip(reply, WriteReply(METER))


def test_negative_reply_no_such_data() -> None:
    frame = h(
        "68",
        "129078563412",
        "68",
        "D1",  # bit 7 from the meter, bit 6 error, function 11 (read)
        "01",
        "35",  # ERR 02 +33: bit 1, no such data
        "8D",  # CS
        "16",
    )
    roundtrip(frame, NegativeReply(METER, 0x11, ErrorBits.NO_DATA))


def test_negative_reply_to_remote_control_password() -> None:
    frame = h(
        "68",
        "129078563412",
        "68",
        "DC",  # error reply to a remote control (1C)
        "01",
        "37",  # ERR 04 +33: bit 2, password or authority
        "9A",  # CS
        "16",
    )
    event = decode_frame(frame)
    roundtrip(frame, NegativeReply(METER, 0x1C, ErrorBits.AUTHORITY))
    assert isinstance(event, NegativeReply) and ErrorBits.AUTHORITY in event.error


def test_negative_reply_to_a_write() -> None:
    # D4: the meter refuses a write (14), here a day time-slot table with more slots
    # than it keeps.
    frame = h(
        "68",  # start
        "129078563412",  # address 123456789012, low byte first
        "68",  # start again
        "D4",  # C = 1101 0100: bit 7 from the meter, bit 6 error reply, function 14 (write)
        "01",  # L: one data byte, the error word
        "53",  # ERR 20 + 33: bit 5, day time slots exceeded
        # CS: 68+12+90+78+56+34+12+68 = 0x286; + D4 = 0x35A; + 01 = 0x35B; + 53 = 0x3AE;
        # the low byte:
        "AE",
        "16",  # end
    )
    event = decode_frame(frame)
    roundtrip(frame, NegativeReply(METER, 0x14, ErrorBits.DAY_SLOTS_EXCEEDED))
    assert isinstance(event, NegativeReply)
    assert event.error == ErrorBits.DAY_SLOTS_EXCEEDED and ErrorBits.AUTHORITY not in event.error


def test_broadcast_time_follows_the_meters_byte_order() -> None:
    frame = h(
        "68",
        "999999999999",  # broadcast: every meter sets its clock, none answers
        "68",
        "08",  # broadcast time
        "06",
        "33",  # ss = 00
        "33",  # mm = 00
        "43",  # hh = 10
        "55",  # DD = 22
        "44",  # MM = 11
        "59",  # YY = 26
        "0F",  # CS
        "16",
    )
    roundtrip(frame, BroadcastTime(datetime(2026, 11, 22, 10, 0, 0)))


def test_daily_freeze_broadcast_and_reply() -> None:
    frame = h(
        "68",
        "999999999999",  # broadcast
        "68",
        "16",  # freeze
        "04",
        "33",  # mm = 00
        "33",  # hh = 00
        "CC",  # DD = 99: every day
        "CC",  # MM = 99: every month
        "7E",  # CS
        "16",
    )
    roundtrip(frame, FreezeRequest(BROADCAST_ADDRESS, 0, 0, None, None))
    roundtrip(h("68", "129078563412", "68", "96", "00", "1C", "16"), FreezeReply(METER))


def test_change_baud_request_and_reply() -> None:
    request = h("68", "129078563412", "68", "17", "01", "53", "F1", "16")  # Z 20: 9600
    roundtrip(request, ChangeBaudRequest(METER, 9600))
    reply = h("68", "129078563412", "68", "97", "01", "53", "71", "16")  # same Z echoed
    roundtrip(reply, ChangeBaudReply(METER, 9600))


def test_relay_trip_and_reply() -> None:
    frame = h(
        "68",
        "129078563412",
        "68",
        "1C",  # remote control
        "10",  # L = 16
        "35",  # PA = 02
        "333333",  # password 000000
        "33333333",  # operator 00000000
        "4D",  # N1 = 1A: trip
        "33",  # N2 = 00
        "333843554459",  # valid until 00 05 10 22 11 26: 2026-11-22 10:05:00
        "6C",  # CS
        "16",
    )
    roundtrip(frame, RelayControl(METER, RelayAction.TRIP, datetime(2026, 11, 22, 10, 5)))
    roundtrip(h("68", "129078563412", "68", "9C", "00", "22", "16"), RelayReply(METER))


def test_secure_relay_control_carries_ciphertext() -> None:
    frame = h(
        "68",
        "129078563412",
        "68",
        "1C",
        "18",  # L = 24
        "CB",  # PA = 98: secure meter, the rest is the master's ciphertext
        "333333",  # password
        "33333333",  # operator
        "333435363738393A3B3C3D3E3F404142",  # ciphertext 00 01 .. 0F
        "92",  # CS
        "16",
    )
    roundtrip(frame, SecureRelayControl(METER, bytes(range(16))))


def test_unmodelled_control_code_is_an_unknown_frame() -> None:
    frame = h("68", "129078563412", "68", "1A", "04", "35333333", "72", "16")  # clear meter
    roundtrip(frame, UnknownFrame(METER, 0x1A, bytes.fromhex("02000000")))


def test_preamble_is_skipped_and_built_on_request() -> None:
    frame = bytes.fromhex("68 12 90 78 56 34 12 68 11 04 33 33 33 33 67 16")
    assert decode_frame(b"\xfe" * 7 + frame) == ReadRequest(METER, 0)
    assert encode(ReadRequest(METER, 0), preamble=4) == b"\xfe" * 4 + frame


# --- malformed frames ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("hexframe", "why"),
    [
        ("68 12 90 78 56 34 12 68 11 04 33 33 33 33 66 16", "checksum"),
        ("68 12 90 78 56 34 12 68 11 04 33 33 33 33 67 17", "16"),  # end byte
        ("68 12 90 78 56 34 12 68 11 04 33 33 33 33 67", "stream"),  # truncated
        ("68 12 90 78 56 34 12 68 11 04 33 33 33 33 67 16 00", "expected end of stream"),
        ("68 12 90 78 56 34 12 69 11 04 33 33 33 33 68 16", "parsing"),  # no second 68
        ("68 1F 90 78 56 34 12 68 11 04 33 33 33 33 74 16", "not BCD"),  # address
        ("68 12 90 78 56 34 12 68 93 01 33 4D 16", "needs 6 data bytes"),
        ("68 12 90 78 56 34 12 68 17 01 34 D2 16", "names no rate"),  # baud word 01
        (
            "68 12 90 78 56 34 12 68 08 06 33 33 33 33 33 33 C6 16",
            "month must be in 1..12",
        ),  # all zero
        ("", "stream"),
    ],
)
def test_malformed_frames_are_remote_protocol_errors(hexframe: str, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        decode_frame(bytes.fromhex(hexframe))


@pytest.mark.parametrize(
    "event",
    [
        ReadRequest("12345678901", 0),  # 11 digits
        ReadRequest("12345678901B", 0),  # not BCD
        ReadRequest(METER, 1 << 32),  # DI of 5 bytes
        ReadRequest(METER, 0, since=datetime(2026, 1, 1)),  # start time without count
        ReadRequest(METER, 0, 1, datetime(2026, 1, 1, 0, 0, 30)),  # seconds in a start
        ReadReply(METER, 0, bytes(252)),  # L > 255
        BroadcastTime(datetime(1999, 12, 31, 23, 59, 59)),  # year outside 2000..2099
        BroadcastTime(datetime(2026, 1, 1, 0, 0, 0, 500)),  # microseconds
        ChangeBaudRequest(METER, 115200),  # not a DL/T 645 rate
        RelayControl(METER, RelayAction.TRIP, datetime(2026, 1, 1), level=0x98),
        RelayControl(METER, RelayAction.TRIP, datetime(2026, 1, 1), password="12345"),
        FreezeRequest(METER, minute=99),
        NegativeReply(METER, 0x20, ErrorBits.OTHER),
    ],
)
def test_unencodable_events_are_local_protocol_errors(event: Event) -> None:
    with pytest.raises(LocalProtocolError):
        encode(event)


# --- properties ---------------------------------------------------------------------

addresses = st.text("0123456789", min_size=12, max_size=12) | st.just("AAAAAAAAAAAA")
dis = st.integers(0, 0xFFFFFFFF)
meter_times = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31, 23, 59, 59)).map(
    lambda t: t.replace(microsecond=0)
)
hex6 = st.text("0123456789ABCDEF", min_size=6, max_size=6)
hex8 = st.text("0123456789ABCDEF", min_size=8, max_size=8)
byte = st.integers(0, 255)
bcd_or_wild = st.none() | st.integers(0, 98)
unmodelled = byte.filter(
    lambda c: (
        c not in (0x11, 0x91, 0xB1, 0x12, 0x92, 0xB2, 0x13, 0x93, 0x14, 0x94, 0x08)
        and c not in (0x16, 0x96, 0x17, 0x97, 0x1C, 0x9C)
        and c & 0xE0 != 0xC0
    )
)


@st.composite
def read_requests(draw: st.DrawFn) -> ReadRequest:
    blocks = draw(st.none() | byte)
    since = draw(st.none() | meter_times.map(lambda t: t.replace(second=0))) if blocks else None
    return ReadRequest(draw(addresses), draw(dis), blocks, since)


events = st.one_of(
    read_requests(),
    st.builds(ReadReply, addresses, dis, st.binary(max_size=251), st.booleans()),
    st.builds(ReadFollowUp, addresses, dis, byte),
    st.builds(ReadFollowUpReply, addresses, dis, st.binary(max_size=250), byte, st.booleans()),
    st.builds(ReadAddressRequest, addresses),
    st.builds(ReadAddressReply, addresses),
    st.builds(WriteRequest, addresses, dis, st.binary(max_size=243), byte, hex6, hex8),
    st.builds(WriteReply, addresses),
    st.builds(
        NegativeReply, addresses, st.integers(0, 0x1F), st.integers(0, 0xFFFF).map(ErrorBits)
    ),
    st.builds(BroadcastTime, meter_times, addresses),
    st.builds(FreezeRequest, addresses, bcd_or_wild, bcd_or_wild, bcd_or_wild, bcd_or_wild),
    st.builds(FreezeReply, addresses),
    st.builds(ChangeBaudRequest, addresses, st.sampled_from([600, 1200, 2400, 4800, 9600, 19200])),
    st.builds(ChangeBaudReply, addresses, st.sampled_from([1200, 2400, 9600])),
    st.builds(
        RelayControl,
        addresses,
        st.sampled_from(RelayAction),
        meter_times,
        byte.filter(lambda b: b != 0x98),
        hex6,
        hex8,
    ),
    st.builds(SecureRelayControl, addresses, st.binary(max_size=247), hex6, hex8),
    st.builds(RelayReply, addresses),
    st.builds(UnknownFrame, addresses, unmodelled, st.binary(max_size=255)),
)


@given(events, st.integers(0, 4))
def test_every_event_round_trips(event: Event, preamble: int) -> None:
    frame = encode(event, preamble=preamble)
    assert frame[:preamble] == b"\xfe" * preamble
    assert decode_frame(frame) == event
    assert len(frame) == preamble + 12 + frame[preamble + 9]
    assert Framer().feed(frame) == [event]  # the framer's own envelope scan agrees


@given(
    st.binary(max_size=300)
    | st.binary(max_size=300).map(lambda b: b"\x68" + b[:6] + b"\x68" + b[6:])
)
def test_any_bytes_decode_to_an_event_or_a_remote_protocol_error(data: bytes) -> None:
    try:
        event = decode_frame(data)
    except RemoteProtocolError:
        return
    assert isinstance(event, Event)


@given(st.binary(min_size=6, max_size=6), byte, st.binary(max_size=255))
def test_well_formed_frames_with_any_content_decode_or_raise_remote_errors(
    address: bytes, control: int, data: bytes
) -> None:
    body = b"\x68" + address + b"\x68" + bytes([control, len(data)])
    body += bytes((b + 0x33) & 0xFF for b in data)
    frame = body + bytes([sum(body) & 0xFF, 0x16])  # our own checksum, independently
    framer = Framer()
    streamed = framer.feed(frame)
    try:
        event = decode_frame(frame)
    except RemoteProtocolError:
        assert streamed == [] and framer.stats.undecodable == 1
        return
    assert streamed == [event]
    assert encode(event) == frame or isinstance(event, NegativeReply)


@given(addresses, byte, st.binary(max_size=255))
def test_raw_frames_round_trip(address: str, control: int, data: bytes) -> None:
    raw = RawFrame(address, control, data)
    assert parse_raw(build_raw(raw)) == raw
