"""The simulated bus on a real pty, with real threads: line timing, collisions, faults.

Timing is asserted only on the bus log (the simulator's own monotonic record of each
frame), never on this test's wall clock; sleeps here only wait for things to happen.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import serial

from gateway.clock import ManualClock
from gateway.errors import PortError
from gateway.protocols.errors import RemoteProtocolError
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.modbus import (
    ReadRequest,
    ReplyReader,
    WriteRequest,
    decode_reply,
    encode_request,
)
from gateway.sim.bus import SimBus
from gateway.sim.config import parse_sim_config
from gateway.sim.model import BusLogEntry
from gateway.sim.service import Simulator

START = datetime(2024, 6, 1, 4, 0, tzinfo=UTC)
READ = ReadRequest(1, 3, 0, 2)  # generic profile: import energy, uint32 0.01 kWh
READ_REPLY_BYTES = 9  # unit, fc, byte count, 4 data bytes, CRC


def bench(
    tmp_path: Path,
    *,
    baud: int = 19200,
    parity: str = "N",
    turnaround_ms: float = 5,
    gap_ms: float | None = None,
    timing: bool = True,
) -> Simulator:
    gap = "~" if gap_ms is None else gap_ms
    text = f"""
buses:
  - {{name: b, link: bus-b, protocol: modbus, baud: {baud}, parity: {parity},
      timing: {str(timing).lower()}, silent_gap_ms: {gap}}}
meters:
  - {{id: m1, bus: b, unit_id: 1, profile: generic, turnaround_ms: {turnaround_ms},
      energy_import_wh: 123450, load: {{kind: constant, watts: 1000}}}}
  - {{id: m2, bus: b, unit_id: 2, profile: generic, turnaround_ms: {turnaround_ms}}}
"""
    config = parse_sim_config(text, "bench.yaml", link_dir=str(tmp_path))
    return Simulator(config, ManualClock(START))


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with bench(tmp_path) as s:
        yield s


def open_port(sim: Simulator, timeout: float = 1.0) -> serial.Serial:
    # pyserial cannot set even parity on a Linux pty: open it without (design.md)
    return serial.Serial(sim.bus("b").path, sim.bus("b").line.baud, timeout=timeout)


def transact(port: serial.Serial, request: ReadRequest | WriteRequest) -> bytes:
    """Send ``request``, return the reply's bytes (b"" if none came in time)."""
    port.write(encode_request(request))
    reader = ReplyReader(request)
    got = b""
    while True:
        byte = port.read(1)
        if not byte:
            return got
        got += byte
        try:
            if reader.feed(byte) is not None:
                return got
        except RemoteProtocolError:
            return got + port.read(64)


def pause(sim: Simulator) -> None:
    """Wait the silent gap and a margin (the master's duty)."""
    time.sleep(sim.bus("b").gap + 0.003)


def wait_for(predicate: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def pairs(entries: list[BusLogEntry]) -> list[tuple[BusLogEntry, BusLogEntry]]:
    out = []
    for a, b in itertools.pairwise(entries):
        if a.direction == "request" and b.direction == "reply":
            out.append((a, b))
    return out


# --- line timing ---------------------------------------------------------------------


@pytest.mark.parametrize(("baud", "parity"), [(2400, "E"), (9600, "N"), (19200, "E")])
def test_transaction_time_follows_the_formula(tmp_path: Path, baud: int, parity: str) -> None:
    turnaround = 0.005
    with bench(tmp_path, baud=baud, parity=parity, turnaround_ms=turnaround * 1000) as sim:
        line = LineSettings(baud, 8, parity, 1)
        with open_port(sim) as port:
            for _ in range(5):
                assert len(transact(port, READ)) == READ_REPLY_BYTES
                pause(sim)
        entries = sim.bus("b").entries()
    done = pairs(entries)
    assert len(done) == 5
    formula = line.transaction_time(8, READ_REPLY_BYTES, turnaround)  # with the t3.5 gap
    measured = []
    for request, reply in done:
        # the request's line time is the configured framing's (11 bits at 8E1)
        assert request.end - request.start == pytest.approx(8 * line.char_bits / baud)
        assert reply.start - request.end == pytest.approx(turnaround)
        # never faster than the wire allows ...
        assert reply.end - reply.start >= READ_REPLY_BYTES * line.char_bits / baud - 1e-6
        measured.append(reply.end - request.start + line.modbus_gap)
    # ... and, but for a scheduling hiccup of this machine, as slow as the formula says
    assert all(m >= formula * 0.999 for m in measured), (measured, formula)
    median = sorted(measured)[len(measured) // 2]
    assert abs(median - formula) <= 0.10 * formula, (measured, formula)


def test_a_request_sent_too_early_collides(tmp_path: Path) -> None:
    with bench(tmp_path, gap_ms=50) as sim, open_port(sim, timeout=0.3) as port:
        assert transact(port, READ)
        assert transact(port, READ) == b""  # straight after the reply: inside the gap
        time.sleep(0.06)
        assert len(transact(port, READ)) == READ_REPLY_BYTES
        bus = sim.bus("b")
        results = [(e.direction, e.result) for e in bus.entries()]
        assert results == [
            ("request", "ok"),
            ("reply", "ok"),
            ("request", "collision"),
            ("request", "ok"),
            ("reply", "ok"),
        ]
        assert bus.counters.collisions == 1
        assert bus.counters.transactions == 2


def test_above_19200_baud_the_gap_is_a_fixed_1_75_ms(tmp_path: Path) -> None:
    """At 38400 8N1 3.5 characters last 0.91 ms, but the gap is 1.75 ms: a request that
    starts less than 1.75 ms after a reply's end collides, one after more does not."""
    chars_3_5 = 3.5 * 10 / 38400
    with bench(tmp_path, baud=38400, turnaround_ms=2) as sim:
        bus = sim.bus("b")
        assert bus.gap == pytest.approx(0.00175)
        assert bus.status()["silent_gap_ms"] == 1.75
        kinds = ["now", "1.2 ms", "3 ms"]  # how long after the reply the next request goes
        seen: set[tuple[str, str]] = set()
        with open_port(sim, timeout=0.05) as port:
            assert len(transact(port, READ)) == READ_REPLY_BYTES
            for attempt in range(60):
                kind = kinds[attempt % 3]
                if kind == "1.2 ms":  # between 3.5 characters and 1.75 ms
                    spin_until = time.monotonic() + 0.0012
                    while time.monotonic() < spin_until:
                        pass
                elif kind == "3 ms":
                    time.sleep(0.003)
                n = bus.log_total
                got = transact(port, READ)
                wait_for(lambda n=n: bus.log_total > n)
                request = bus.log_since(n)[0][0]
                seen.add((kind, request.result))
                if request.result == "collision":
                    assert got == b""
                    time.sleep(0.01)  # let the line go quiet, then get a reply to follow
                    assert len(transact(port, READ)) == READ_REPLY_BYTES
                else:
                    assert len(got) == READ_REPLY_BYTES
                if {("now", "collision"), ("1.2 ms", "collision"), ("3 ms", "ok")} <= seen:
                    break
        entries = bus.entries()
    # the rule, on every request that followed a reply (bus time, from the log)
    follow = [(a, b) for a, b in itertools.pairwise(entries) if a.direction == "reply"]
    intervals = {"collision": [], "ok": []}  # type: dict[str, list[float]]
    for reply, request in follow:
        assert request.direction == "request"
        interval = request.start - reply.end
        intervals[request.result].append(interval)
        assert (request.result == "collision") == (interval < 0.00175 - 1e-6), interval
    # a collision more than 3.5 characters after the reply: the gap is not t3.5 here
    assert max(intervals["collision"]) > chars_3_5, intervals
    assert min(intervals["ok"]) > 0.00175
    assert {("now", "collision"), ("1.2 ms", "collision"), ("3 ms", "ok")} <= seen, seen


def test_back_to_back_requests_collide_and_the_pending_reply_is_lost(sim: Simulator) -> None:
    with open_port(sim, timeout=0.2) as port:
        port.write(encode_request(READ) * 2)  # one write: the second frame has no gap
        assert port.read(64) == b""
        bus = sim.bus("b")
        wait_for(lambda: len(bus.entries()) == 3)
        request1, request2, reply = bus.entries()
        assert (request1.result, request2.result, reply.result) == ("ok", "collision", "collision")
        assert request2.start == pytest.approx(request1.end)  # the UART sent it right after
        assert bus.counters.collisions == 1
        assert bus.counters.transactions == 0


def test_timing_off_answers_back_to_back(tmp_path: Path) -> None:
    with bench(tmp_path, timing=False) as sim, open_port(sim) as port:
        for _ in range(20):
            assert len(transact(port, READ)) == READ_REPLY_BYTES
        assert sim.bus("b").counters.collisions == 0
        assert sim.bus("b").counters.transactions == 20


# --- multi-drop ----------------------------------------------------------------------


def test_only_the_addressed_meter_answers(sim: Simulator) -> None:
    with open_port(sim, timeout=0.2) as port:
        reply = decode_reply(READ, transact(port, READ))
        assert reply.registers == (0, 12345)  # m1: 123450 Wh = 12345 x 0.01 kWh
        pause(sim)
        other = ReadRequest(2, 3, 0, 2)
        assert decode_reply(other, transact(port, other)).registers == (0, 0)
        pause(sim)
        assert transact(port, ReadRequest(3, 3, 0, 2)) == b""  # nobody is unit 3
    results = [(e.address, e.result) for e in sim.bus("b").entries() if e.direction == "request"]
    assert results == [("1", "ok"), ("2", "ok"), ("3", "no-reply")]
    replies = [e.meta["meter"] for e in sim.bus("b").entries() if e.direction == "reply"]
    assert replies == ["m1", "m2"]


def test_broadcast_acts_but_gets_no_answer(sim: Simulator) -> None:
    from gateway.sim.modbus_meter import crc16

    body = bytes([0, 5, 0, 0, 0, 0])  # unit 0, write coil 0 = off: every relay opens
    with open_port(sim, timeout=0.3) as port:
        port.write(body + crc16(body))
        assert port.read(16) == b""
    bus = sim.bus("b")
    wait_for(lambda: bus.counters.broadcasts == 1)
    assert [e.result for e in bus.entries()] == ["broadcast"]
    truth = sim.truth()["meters"]
    assert truth["m1"]["relay_closed"] is False
    assert truth["m2"]["relay_closed"] is False


# --- garbage from the master ---------------------------------------------------------


def test_bad_crc_and_cut_short_requests_are_garbled(sim: Simulator) -> None:
    frame = encode_request(READ)
    with open_port(sim, timeout=0.2) as port:
        port.write(frame[:-1] + bytes([frame[-1] ^ 1]))
        assert port.read(16) == b""
        port.write(frame[:3])  # the rest never comes: dropped after the idle time
        assert port.read(16) == b""
        pause(sim)
        assert len(transact(port, READ)) == READ_REPLY_BYTES
    bus = sim.bus("b")
    assert bus.counters.garbled == 2
    assert [e.result for e in bus.entries()][:2] == ["garbled", "garbled"]


# --- faults --------------------------------------------------------------------------


def test_fault_silent(sim: Simulator) -> None:
    sim.fault("m1", "silent")
    with open_port(sim, timeout=0.2) as port:
        assert transact(port, READ) == b""
        sim.clear("m1")
        pause(sim)
        assert transact(port, READ)
    bus = sim.bus("b")
    assert [e.result for e in bus.entries()] == ["fault:silent", "ok", "ok"]
    assert bus.counters.faults_injected == 1


def test_fault_late(sim: Simulator) -> None:
    sim.fault("m1", "late", delay_ms=100)
    with open_port(sim) as port:
        assert decode_reply(READ, transact(port, READ)).registers == (0, 12345)
    request, reply = sim.bus("b").entries()
    assert reply.result == "fault:late"
    assert reply.start - request.end == pytest.approx(0.005 + 0.100)
    assert sim.bus("b").counters.faults_injected == 1


def test_fault_bad_checksum(sim: Simulator) -> None:
    sim.fault("m1", "bad_checksum")
    with open_port(sim, timeout=0.3) as port:
        got = transact(port, READ)
    with pytest.raises(RemoteProtocolError, match="bad CRC"):
        decode_reply(READ, got)
    assert sim.bus("b").entries()[-1].result == "fault:bad_checksum"


def test_fault_garbage(sim: Simulator) -> None:
    with open_port(sim, timeout=0.3) as port:
        good = transact(port, READ)
        pause(sim)
        sim.fault("m1", "garbage")
        port.write(encode_request(READ))
        got = port.read(len(good))
    assert len(got) == len(good)
    assert got != good
    assert sim.bus("b").entries()[-1].result == "fault:garbage"


def test_fault_wrong_address(sim: Simulator) -> None:
    from gateway.sim.modbus_meter import crc16

    sim.fault("m1", "wrong_address")
    with open_port(sim, timeout=0.3) as port:
        port.write(encode_request(READ))
        got = port.read(READ_REPLY_BYTES)
    assert got[0] == 2  # answered as unit 2, with a valid CRC
    assert crc16(got[:-2]) == got[-2:]
    assert sim.bus("b").entries()[-1].result == "fault:wrong_address"


def test_fault_expires(sim: Simulator) -> None:
    sim.fault("m1", "silent", seconds=0.2)
    with open_port(sim, timeout=0.1) as port:
        assert transact(port, READ) == b""
        time.sleep(0.25)
        assert transact(port, READ)
    assert sim.truth("m1")["meters"]["m1"]["faults"]["silent"] is False


def test_whole_bus_silent_for_a_period(sim: Simulator) -> None:
    sim.bus_silent("b", seconds=0.3)
    with open_port(sim, timeout=0.1) as port:
        assert transact(port, READ) == b""
        pause(sim)
        assert transact(port, ReadRequest(2, 3, 0, 2)) == b""
        time.sleep(0.35)
        assert transact(port, READ)
    bus = sim.bus("b")
    assert [e.result for e in bus.entries()][:2] == ["fault:bus_silent", "fault:bus_silent"]
    assert bus.counters.faults_injected == 2


# --- the pty and its link ------------------------------------------------------------


def test_a_client_may_close_and_reopen(sim: Simulator) -> None:
    for _ in range(3):
        with open_port(sim) as port:
            assert len(transact(port, READ)) == READ_REPLY_BYTES
        pause(sim)
    assert sim.bus("b").counters.transactions == 3


def test_restart_keeps_the_link(tmp_path: Path) -> None:
    link = tmp_path / "bus-b"
    link.symlink_to(tmp_path / "gone")  # a stale link from a simulator that died
    for _ in range(2):
        with bench(tmp_path) as sim:
            assert sim.bus("b").path == str(link)
            assert os.readlink(link) == sim.bus("b").pty_name
            with open_port(sim) as port:
                assert len(transact(port, READ)) == READ_REPLY_BYTES
        assert not link.exists() and not link.is_symlink()  # removed on stop


def test_a_file_in_the_way_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "bus-b").write_text("not a link")
    bus = SimBus("b", tmp_path / "bus-b", "modbus", LineSettings(9600, 8, "N", 1))
    with pytest.raises(PortError, match="not a symlink"):
        bus.start()
    assert (tmp_path / "bus-b").read_text() == "not a link"


def test_log_since_numbers_entries(sim: Simulator) -> None:
    with open_port(sim) as port:
        for _ in range(2):
            transact(port, READ)
            pause(sim)
    bus = sim.bus("b")
    entries, nxt = bus.log_since(0)
    assert len(entries) == 4 and nxt == 4 == bus.log_total
    later, nxt2 = bus.log_since(2, limit=1)
    assert later == entries[2:3] and nxt2 == 3
