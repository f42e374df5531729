"""Cross-check against an independent implementation: the PyPI package ``dlt645``.

Its frames are parsed by us and ours by it, both ways, for read (11/91), error (D1)
and read-address (13/93) frames.  Its known quirk: its broadcast time (08) sends
``YY MM DD hh mm ss``; meters expect ``ss mm hh DD MM YY`` (low byte first, like
every other DL/T 645 field), and ours follows the meters.

``dlt645`` logs through loguru, disabled by default: we disable it again explicitly
and check that importing and using it starts no thread.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

import dlt645
import pytest
from dlt645.protocol.protocol import DLT645Protocol
from dlt645.service.clientsvc.client_service import MeterClientService
from dlt645.service.serversvc.server_service import MeterServerService
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.dlt645 import (
    BroadcastTime,
    ErrorBits,
    NegativeReply,
    ReadAddressReply,
    ReadAddressRequest,
    ReadReply,
    ReadRequest,
    decode_frame,
    decode_value,
    encode,
    encode_value,
)

METER = "123456789012"
WIRE = bytes.fromhex("129078563412")  # the same address as it is sent, low byte first
addresses = st.text("0123456789", min_size=12, max_size=12)


def wire(address: str) -> bytes:
    return bytes.fromhex(address)[::-1]


@pytest.fixture(scope="module", autouse=True)
def quiet_dlt645() -> Iterator[None]:
    """Keep the foreign package's logging off and check it leaves no thread behind."""
    threads = threading.active_count()
    dlt645.disable_logging()
    yield
    assert threading.active_count() == threads


class _Capture:
    """Stands in for dlt645's transport: records what its client would send."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def _ensure_connection(self) -> bool:
        return True

    def send_only(self, frame: bytes) -> bool:
        self.sent.append(bytes(frame))
        return True


@functools.cache
def _server() -> MeterServerService:
    return MeterServerService(None, bytearray(6))  # no transport: we call it directly


@functools.cache
def _client() -> MeterClientService:
    return MeterClientService(None)


def their_server(address: bytes = WIRE) -> MeterServerService:
    """Their simulated meter at ``address`` (built once: building one takes 0.6 s)."""
    server = _server()
    server.address = bytearray(address)
    return server


def their_client(address: bytes = WIRE) -> MeterClientService:
    """Their client expecting a meter at ``address`` (built once, like the server)."""
    client = _client()
    client.address = bytearray(address)
    return client


# --- read requests, both ways -------------------------------------------------------


@given(addresses, st.integers(0, 0xFFFFFFFF), st.integers(0, 4))
def test_their_read_request_is_ours_byte_for_byte(address: str, di: int, preamble: int) -> None:
    theirs = bytes(
        DLT645Protocol.build_frame(wire(address), 0x11, di.to_bytes(4, "little"), preamble)
    )
    assert theirs == encode(ReadRequest(address, di), preamble=preamble)
    assert decode_frame(theirs) == ReadRequest(address, di)


@given(addresses, st.integers(0, 0xFFFFFFFF))
def test_our_read_request_parses_in_theirs(address: str, di: int) -> None:
    frame = DLT645Protocol.deserialize(encode(ReadRequest(address, di), preamble=4))
    assert bytes(frame.addr) == wire(address)
    assert frame.ctrl_code == 0x11
    assert bytes(frame.data) == di.to_bytes(4, "little")


# --- read replies with values, both ways --------------------------------------------

# DI -> (digits after the point, signed, largest magnitude in the smallest unit).  Theirs
# reads every format as signed, so unsigned values stay below 8 in the top digit too
# (frequency 80.00 Hz reads as -0.0 in theirs), and within the Min/Max of their table.
VALUE_DIS = {
    0x00000000: (2, True, 79_999_999),  # combined active energy, XXXXXX.XX kWh
    0x00010000: (2, False, 79_999_999),  # forward active energy
    0x00020000: (2, False, 79_999_999),  # reverse active energy
    0x02010100: (1, False, 7_999),  # voltage A, XXX.X V
    0x02020100: (3, True, 799_999),  # current A, XXX.XXX A
    0x02030000: (4, True, 799_999),  # active power, XX.XXXX kW
    0x02060000: (3, True, 999),  # power factor, X.XXX
    0x02800002: (2, False, 7_999),  # frequency, XX.XX Hz
}


@st.composite
def readings(draw: st.DrawFn) -> tuple[int, Decimal]:
    di = draw(st.sampled_from(sorted(VALUE_DIS)))
    decimals, signed, top = VALUE_DIS[di]
    n = draw(st.integers(-top if signed else 0, top))
    return di, Decimal(n).scaleb(-decimals)


def _set(server: MeterServerService, di: int, value: Decimal) -> None:
    ok = server.set_00(di, float(value)) if di >> 24 == 0 else server.set_02(di, float(value))
    assert ok


@given(readings())
def test_their_meter_answers_our_read_and_we_decode_its_value(reading: tuple[int, Decimal]) -> None:
    di, value = reading
    server = their_server()
    _set(server, di, value)
    request = DLT645Protocol.deserialize(encode(ReadRequest(METER, di)))
    answer = bytes(server.handle_request(request))
    reply = decode_frame(answer)
    assert isinstance(reply, ReadReply) and (reply.address, reply.di) == (METER, di)
    assert decode_value(di, reply.data) == value


@given(readings())
def test_their_client_decodes_our_reply(reading: tuple[int, Decimal]) -> None:
    di, value = reading
    ours = encode(ReadReply(METER, di, encode_value(di, value)), preamble=4)
    item = their_client().handle_response(DLT645Protocol.deserialize(ours))
    assert item is not None
    assert Decimal(repr(item.value)) == value  # their float, read back exactly


def test_golden_energy_reply_from_their_meter() -> None:
    server = their_server()
    assert server.set_00(0x00000000, 12345.67)
    request = DLT645Protocol.deserialize(encode(ReadRequest(METER, 0)))
    answer = bytes(server.handle_request(request))
    # domain.md's worked example, with their 4 FE of preamble
    assert answer == bytes.fromhex("FEFEFEFE 68129078563412 68 91 08 33333333 9A785634 87 16")


def test_their_error_reply_is_our_negative_reply() -> None:
    request = DLT645Protocol.deserialize(encode(ReadRequest(METER, 0x00FE0000)))  # not in theirs
    answer = bytes(their_server().handle_request(request))
    assert decode_frame(answer) == NegativeReply(METER, 0x11, ErrorBits.NO_DATA)


# --- read address, both ways --------------------------------------------------------


def test_their_read_address_request_is_ours() -> None:
    theirs = bytes(DLT645Protocol.build_frame(b"\xaa" * 6, 0x13, b"", 0))
    assert theirs == encode(ReadAddressRequest())
    assert decode_frame(theirs) == ReadAddressRequest()


@given(addresses)
def test_their_meter_answers_read_address(address: str) -> None:
    request = DLT645Protocol.deserialize(encode(ReadAddressRequest(), preamble=4))
    answer = bytes(their_server(wire(address)).handle_request(request))
    assert decode_frame(answer) == ReadAddressReply(address)


@given(addresses)
def test_their_client_learns_the_address_from_our_reply(address: str) -> None:
    client = their_client(bytes(6))
    ours = encode(ReadAddressReply(address), preamble=4)
    assert client.handle_response(DLT645Protocol.deserialize(ours)) is not None
    assert bytes(client.address) == wire(address)


# --- the broadcast-time quirk -------------------------------------------------------


def test_their_broadcast_time_is_in_the_reverse_order_of_the_meters() -> None:
    at = datetime(2026, 11, 22, 10, 0, 5)
    capture = _Capture()
    client = MeterClientService(capture)
    assert client.broadcast_time_sync(at)
    (theirs,) = capture.sent
    ours = encode(BroadcastTime(at), preamble=4)
    their_data = DLT645Protocol.deserialize(theirs).data
    our_data = DLT645Protocol.deserialize(ours).data
    assert bytes(our_data) == bytes.fromhex("05 00 10 22 11 26")  # ss mm hh DD MM YY
    assert bytes(their_data) == bytes.fromhex("26 11 22 10 00 05")  # YY MM DD hh mm ss
    assert theirs[: -2 - 8] == ours[: -2 - 8]  # same envelope up to the data
