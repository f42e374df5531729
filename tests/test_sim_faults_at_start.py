"""Faults set at start in SIM.yaml, on real ptys: each of a meter's five fault kinds
(``faults:`` of a meter) and a whole bus silent for its first seconds (``silent_s``
of a bus).  What happened is judged from the simulator's bus log and the bytes a
client on the pty received; sleeps here only wait for things to happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import serial

from gateway.clock import ManualClock, monotonic
from gateway.errors import ConfigError
from gateway.protocols import dlt645
from gateway.protocols.errors import RemoteProtocolError
from gateway.protocols.modbus import ReadRequest, decode_reply, encode_request
from gateway.sim.config import parse_sim_config
from gateway.sim.modbus_meter import crc16
from gateway.sim.model import BusLogEntry
from gateway.sim.service import Simulator

START = datetime(2024, 6, 1, 4, 0, tzinfo=UTC)
TURNAROUND_MS = 5
LATE_MS = 100
ADDRESS = "000000000001"


@dataclass(frozen=True)
class Peer:
    """How a client reads the meter on one protocol, and what a right answer is."""

    protocol: str
    bus_line: str
    meter_line: str
    request: bytes
    reply_size: int
    value: Callable[[bytes], int]
    """A clean reply -> the energy register it carries (raises on a bad frame)."""
    sender: Callable[[bytes], str]
    """A reply with a valid checksum -> the address it claims to come from."""
    own_address: str


def _modbus_value(reply: bytes) -> int:
    registers = decode_reply(ReadRequest(1, 3, 0, 2), reply).registers  # type: ignore[union-attr]
    return registers[0] << 16 | registers[1]  # uint32, 0.01 kWh


def _modbus_sender(reply: bytes) -> str:
    assert crc16(reply[:-2]) == reply[-2:], "the reply's CRC is not valid"
    return str(reply[0])


def _dlt_value(reply: bytes) -> int:
    event = dlt645.decode_frame(reply)
    assert isinstance(event, dlt645.ReadReply), event
    value = dlt645.decode_value(0x00010000, event.data)
    assert isinstance(value, Decimal)
    return int(value * 100)  # 0.01 kWh


def _dlt_sender(reply: bytes) -> str:
    return dlt645.decode_frame(reply).address  # type: ignore[union-attr]


PEERS = {
    "modbus": Peer(
        "modbus",
        "{name: b, link: bus-b, protocol: modbus, baud: 19200, parity: N",
        "unit_id: 1, profile: generic",
        encode_request(ReadRequest(1, 3, 0, 2)),
        9,  # unit, fc, byte count, 4 data bytes, CRC
        _modbus_value,
        _modbus_sender,
        "1",
    ),
    "dlt645": Peer(
        "dlt645",
        "{name: b, link: bus-b, protocol: dlt645, baud: 9600, parity: E",
        f'address: "{ADDRESS}"',
        dlt645.encode(dlt645.ReadRequest(ADDRESS, 0x00010000), preamble=4),
        20,  # 68 A0..A5 68 91 08 DI(4) XXXXXX.XX CS 16
        _dlt_value,
        _dlt_sender,
        ADDRESS,
    ),
}


def bench(tmp_path: Path, peer: Peer, *, faults: str = "", bus_extra: str = "") -> Simulator:
    fault_key = f", faults: {{{faults}}}" if faults else ""
    text = f"""
buses:
  - {peer.bus_line}{bus_extra}}}
meters:
  - {{id: m1, bus: b, {peer.meter_line}, turnaround_ms: {TURNAROUND_MS},
      energy_import_wh: 123450{fault_key}}}
"""
    config = parse_sim_config(text, "bench.yaml", link_dir=str(tmp_path))
    return Simulator(config, ManualClock(START))


def exchange(sim: Simulator, peer: Peer, timeout: float = 0.4) -> bytes:
    """Send the read, return what came back within ``timeout`` (b"" if nothing)."""
    # pyserial cannot set even parity on a pty: open it 8N1 (design.md)
    with serial.Serial(sim.bus("b").path, sim.bus("b").line.baud, timeout=timeout) as port:
        port.write(peer.request)
        got = port.read(peer.reply_size)
    time.sleep(0.02)  # the master's silent gap, and time for the log entry to land
    return got


def results(entries: list[BusLogEntry]) -> list[tuple[str, str]]:
    return [(e.direction, e.result) for e in entries]


# --- a meter's faults from the start -------------------------------------------------------

# kind -> (the faults: mapping in SIM.yaml, FaultState field, its value)
KINDS = {
    "silent": ("silent: true", "silent", True),
    "late": (f"late_ms: {LATE_MS}", "extra_delay", LATE_MS / 1000),
    "bad_checksum": ("bad_checksum: true", "bad_checksum", True),
    "garbage": ("garbage: true", "garbage", True),
    "wrong_address": ("wrong_address: true", "wrong_address", True),
}


@pytest.mark.parametrize("protocol", sorted(PEERS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_fault_set_in_the_config_acts_from_the_first_request(
    tmp_path: Path, kind: str, protocol: str
) -> None:
    peer = PEERS[protocol]
    text, field, value = KINDS[kind]
    with bench(tmp_path, peer, faults=text) as sim:
        faults = sim.truth("m1")["meters"]["m1"]["faults"]
        assert faults[field] == value
        assert [k for k, v in faults.items() if v and k != field] == []  # only this one
        got = exchange(sim, peer)
        entries = sim.bus("b").entries()
        sim.clear("m1")  # what the control socket's clear does: the meter is well again
        clean = exchange(sim, peer)
        after = sim.bus("b").entries()[len(entries) :]
    assert results(after) == [("request", "ok"), ("reply", "ok")]
    assert peer.value(clean) == 12345  # 123450 Wh in 0.01 kWh
    assert sim.bus("b").counters.faults_injected == 1
    if kind == "silent":
        assert got == b""
        assert results(entries) == [("request", "fault:silent")]
        return
    assert results(entries) == [("request", "ok"), ("reply", f"fault:{kind}")]
    request, reply = entries
    assert reply.nbytes == len(got) == peer.reply_size
    if kind == "late":
        assert reply.start - request.end == pytest.approx((TURNAROUND_MS + LATE_MS) / 1000)
        assert got == clean  # late, but right
        assert (after[1].start - after[0].end) == pytest.approx(TURNAROUND_MS / 1000)
    elif kind == "bad_checksum":
        assert got != clean and len(got) == len(clean)
        with pytest.raises(RemoteProtocolError):
            peer.value(got)
    elif kind == "garbage":
        assert got != clean
        with pytest.raises((RemoteProtocolError, AssertionError)):
            peer.value(got)
    else:  # wrong_address: a valid frame from somebody else
        assert peer.sender(clean) == peer.own_address
        assert peer.sender(got) != peer.own_address


def test_a_fault_key_is_checked_where_it_is_written() -> None:
    text = (
        "buses:\n  - {name: b, protocol: modbus}\nmeters:\n"
        "  - {id: m, bus: b, unit_id: 1, profile: generic, faults: {late_ms: -3}}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_sim_config(text, "sim.yaml")
    assert (info.value.line, info.value.column) == (4, text.splitlines()[3].index("-3") + 1)
    assert "late_ms: must be between" in info.value.message


# --- a whole bus silent from the start -----------------------------------------------------


@pytest.mark.parametrize("protocol", sorted(PEERS))
def test_a_bus_is_silent_for_its_first_seconds(tmp_path: Path, protocol: str) -> None:
    peer = PEERS[protocol]
    silent_s = 0.5
    sim = bench(tmp_path, peer, bus_extra=f", silent_s: {silent_s}")
    assert sim.config.bus("b").silent_s == silent_s
    with sim:
        after_start = monotonic()
        assert sim.bus("b").silent
        assert exchange(sim, peer, timeout=0.1) == b""
        while monotonic() < after_start + silent_s + 0.05:
            time.sleep(0.02)
        assert not sim.bus("b").silent
        assert peer.value(exchange(sim, peer)) == 12345
        entries = sim.bus("b").entries()
    assert results(entries) == [
        ("request", "fault:bus_silent"),
        ("request", "ok"),
        ("reply", "ok"),
    ]
    silenced, answered = entries[0], entries[1]
    assert silenced.start < after_start + silent_s  # it came inside the silent period ...
    assert answered.start > after_start + silent_s  # ... and the answered one after it
    assert sim.bus("b").counters.faults_injected == 1


def test_a_silent_bus_is_cleared_through_control(tmp_path: Path) -> None:
    peer = PEERS["modbus"]
    with bench(tmp_path, peer, bus_extra=", silent_s: 600") as sim:
        assert exchange(sim, peer, timeout=0.1) == b""
        sim.clear(bus_name="b")
        assert peer.value(exchange(sim, peer)) == 12345
        entries = sim.bus("b").entries()
    assert results(entries) == [
        ("request", "fault:bus_silent"),
        ("request", "ok"),
        ("reply", "ok"),
    ]


def test_no_silent_s_means_never_silent(tmp_path: Path) -> None:
    peer = PEERS["modbus"]
    with bench(tmp_path, peer, bus_extra=", silent_s: ~") as sim:
        assert sim.config.bus("b").silent_s is None
        assert peer.value(exchange(sim, peer)) == 12345


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "silent_s: must be between 0"),
        ("soon", "silent_s: must be a number"),
    ],
)
def test_silent_s_is_checked_where_it_is_written(value: str, message: str) -> None:
    text = f"buses:\n  - {{name: b, protocol: modbus, silent_s: {value}}}\n"
    with pytest.raises(ConfigError) as info:
        parse_sim_config(text, "sim.yaml")
    err = info.value
    assert (err.file, err.line, err.column) == (
        "sim.yaml",
        2,
        text.splitlines()[1].index(value) + 1,
    )
    assert message in err.message, err.message
