"""Drivers without a line: the registry, the serial port's errors and pty parity
fallback, the reply readers, the Modbus hot-path decoding against the codec, and the
poller's bookkeeping on made-up results."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import termios
import tty
from collections.abc import Iterator
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clock import ManualClock
from gateway.config import Meter, SerialBus
from gateway.drivers import profiles, registry
from gateway.drivers.base import WrongAddress
from gateway.drivers.dlt645 import POLL_DIS, Dlt645Driver, Dlt645Reader
from gateway.drivers.jobs import JobResult, ReadJob, WriteJob
from gateway.drivers.modbus import ModbusDriver, ModbusReader, _Field
from gateway.drivers.serialport import SerialPort, is_pty
from gateway.errors import ConfigError, LocalProtocolError, PortError, RemoteProtocolError
from gateway.poller import Poller, PollSettings
from gateway.protocols import dlt645
from gateway.protocols.batch import MeterEvent
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.modbus import (
    DataType,
    ModbusExceptionReply,
    ReadReply,
    ReadRequest,
    RegisterSpec,
    WordOrder,
    decode_register,
    encode_exception,
    encode_reply,
)
from gateway.protocols.quantities import Quantity, Reading

MB_BUS = SerialBus("mb", "/dev/null", "modbus", baud=9600, parity="E")
DL_BUS = SerialBus("dl", "/dev/null", "dlt645", baud=2400, parity="E", timeout=0.3, retries=2)


# --- registry ---------------------------------------------------------------------


def test_registry_table_and_lazy_classes() -> None:
    assert registry.DRIVERS == {
        "dlt645": "gateway.drivers.dlt645:Dlt645Driver",
        "modbus": "gateway.drivers.modbus:ModbusDriver",
    }
    assert registry.driver_class("modbus") is ModbusDriver
    assert registry.driver_class("dlt645") is Dlt645Driver
    assert {"dlt645", "modbus"} <= set(registry.available())
    with pytest.raises(ConfigError, match="no meter driver for protocol 'mbus'"):
        registry.driver_class("mbus")


def test_registry_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = {"iec62056": "gateway.drivers.dlt645:Dlt645Driver", "bad": "gateway.errors:PortError"}
    monkeypatch.setattr(registry, "_plugins", lambda: plugins)
    monkeypatch.setattr(registry, "_loaded", {})
    assert registry.driver_class("iec62056") is Dlt645Driver
    assert "iec62056" in registry.available()
    with pytest.raises(ConfigError, match="is not a MeterDriver"):
        registry.driver_class("bad")
    plugins["gone"] = "no.such.module:Driver"
    with pytest.raises(ConfigError, match="cannot be loaded"):
        registry.driver_class("gone")


def test_an_installed_package_adds_a_driver_by_entry_point(tmp_path: Path) -> None:
    # a real distribution on sys.path (its dist-info with entry_points.txt), found by
    # importlib.metadata in a fresh interpreter; the built-in table still wins its names
    (tmp_path / "gwplug").mkdir()
    (tmp_path / "gwplug" / "__init__.py").write_text(
        "from gateway.drivers.dlt645 import Dlt645Driver\n\n"
        "class Iec62056Driver(Dlt645Driver):\n    protocol = 'iec62056'\n"
    )
    info = tmp_path / "gwplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gwplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[gateway.drivers]\niec62056 = gwplug:Iec62056Driver\nmodbus = gwplug:Iec62056Driver\n"
    )
    probe = (
        "import sys\n"
        "from gateway.drivers import registry\n"
        "print(registry.available())\n"
        "print(registry.driver_class('iec62056').__qualname__)\n"
        "print(registry.driver_class('modbus').__qualname__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "['dlt645', 'iec62056', 'modbus']",
        "Iec62056Driver",
        "ModbusDriver",  # the table wins over an entry point of the same name
    ]


def test_driver_settings_from_the_bus() -> None:
    d = registry.make_driver(Meter("d", "dl", address="000000000001"), DL_BUS)
    assert isinstance(d, Dlt645Driver)
    assert (d.retries, d.cap) == (2, 0.3)
    assert d.poll_dis == list(POLL_DIS)
    m = registry.make_driver(Meter("m", "mb", unit_id=3, profile="sdm120"), MB_BUS)
    assert isinstance(m, ModbusDriver)
    assert m.retries == 1
    assert m.cap == pytest.approx(3 * 0.020 + 0.05)  # profile turnaround 20 ms
    m.stats.turnaround_max = 0.010
    assert m.allowance(0) == pytest.approx(0.02 + 0.03 + 2 * 11 / 9600)
    assert m.allowance(1) == m.cap  # a retry waits the full allowance
    with pytest.raises(LocalProtocolError):
        Dlt645Driver(Meter("x", "dl"), DL_BUS)
    with pytest.raises(LocalProtocolError):
        ModbusDriver(Meter("x", "mb", unit_id=1), MB_BUS)


def test_plans() -> None:
    m = ModbusDriver(Meter("m", "mb", unit_id=3, profile="sdm120"), MB_BUS)
    poll = m.plan(ReadJob("m"))
    assert [t.request[:2] for t in poll] == [b"\x03\x04"] * len(poll)
    assert len(m.plan(ReadJob("m", (), (Quantity.ENERGY_IMPORT,)))) == 1
    with pytest.raises(LocalProtocolError):
        m.plan(ReadJob("m", (0x00010000,)))
    with pytest.raises(LocalProtocolError):
        m.plan(WriteJob("m", b"raw"))
    d = Dlt645Driver(Meter("d", "dl", address="000000000001"), DL_BUS)
    (t,) = d.plan(ReadJob("d", (0x04000402,)))
    assert t.request == bytes.fromhex(
        "fefefefe"  # 4 FE wake-up bytes
        "68 010000000000 68"  # address 000000000001, low byte first
        "11 04"  # C = read, L = 4
        "35 37 33 37"  # DI 04000402 sent DI0 first, each +0x33
        "bc 16"  # CS = sum from the first 68 through DATA (0x1BC) mod 256, end
    )
    (b,) = d.plan(WriteJob("d", dlt645.BroadcastTime(datetime(2024, 6, 1, 12, 0)), False))
    assert b.new_reader is None


# --- serial port ------------------------------------------------------------------


@pytest.fixture
def pty_path() -> Iterator[str]:
    master, slave = os.openpty()
    tty.setraw(master)
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_a_pty_refusing_parity_is_opened_without(
    pty_path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = SerialPort._make
    asked: list[str] = []

    def strict(self: SerialPort, parity: str) -> object:
        asked.append(parity)
        if parity != "N":
            raise termios.error(22, "Invalid argument")
        return original(self, parity)

    monkeypatch.setattr(SerialPort, "_make", strict)
    port = SerialPort(pty_path, LineSettings(2400, 8, "E", 1))
    assert is_pty(pty_path)
    with caplog.at_level(logging.WARNING, "gateway.drivers.serialport"):
        port.open()
        port.open()  # a reopen says nothing more
        port.close()
    assert port.parity_fallback and asked == ["E", "N", "E", "N"]
    assert len([r for r in caplog.records if "refuses parity E" in r.message]) == 1


def test_port_errors_keep_their_cause(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    port = SerialPort("/nonexistent/ttyUSB9", LineSettings())
    with pytest.raises(PortError, match="cannot open /nonexistent/ttyUSB9") as info:
        port.open()
    assert info.value.__cause__ is not None
    with pytest.raises(PortError, match="not open"):
        port.write(b"x")


def test_a_hung_up_pty_is_a_port_error() -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    port = SerialPort(os.ttyname(slave), LineSettings(9600, 8, "N", 1))
    port.open()
    try:
        assert port.read_available() == b""  # idle: nothing, not an error
        os.write(master, b"\x01\x02")
        assert port.wait_readable(1.0)
        assert port.read_available(ready=True) == b"\x01\x02"
        os.close(master)
        os.close(slave)
        with pytest.raises(PortError):
            port.wait_readable(1.0)
            port.read_available(ready=True)
    finally:
        port.close()


# --- readers ----------------------------------------------------------------------


def test_dlt645_reader() -> None:
    reply = dlt645.encode(dlt645.ReadReply("000000000001", 0x04000402, b"\x01" + b"\x00" * 5))
    r = Dlt645Reader("000000000001", 0x11, 0x04000402)
    echo = dlt645.encode(dlt645.ReadRequest("000000000001", 0x04000402), preamble=2)
    assert r.feed(echo) is None  # an adapter's echo of our request is skipped
    assert r.needed() == 12
    assert r.feed(b"\xfe\xfe" + reply[:10]) is None
    assert r.needed() == len(reply) - 10
    got = r.feed(reply[10:])
    assert isinstance(got, dlt645.ReadReply) and got.di == 0x04000402
    other = dlt645.encode(dlt645.ReadReply("000000000002", 0x04000402, b"\x00" * 6))
    with pytest.raises(WrongAddress):
        Dlt645Reader("000000000001", 0x11, 0x04000402).feed(other)
    with pytest.raises(RemoteProtocolError, match="bad frame"):
        Dlt645Reader("000000000001", 0x11).feed(reply[:-2] + bytes([reply[-2] ^ 1]) + b"\x16")
    with pytest.raises(RemoteProtocolError, match="DI 04000401"):
        wrong_di = dlt645.encode(dlt645.ReadReply("000000000001", 0x04000401, b"\x00" * 6))
        Dlt645Reader("000000000001", 0x11, 0x04000402).feed(wrong_di)


def test_modbus_reader() -> None:
    request = ReadRequest(7, 4, 0, 2)
    reply = encode_reply(ReadReply(7, 4, (0x4366, 0x8000)))
    r = ModbusReader(request)
    assert r.feed(reply[:4]) is None and r.needed() == len(reply) - 4
    assert r.feed(reply[4:]) == ReadReply(7, 4, (0x4366, 0x8000))
    exc = ModbusReader(request).feed(encode_exception(7, 4, 2))
    assert isinstance(exc, ModbusExceptionReply) and exc.code == 2
    from_other = encode_reply(ReadReply(8, 4, (1, 2)))
    with pytest.raises(WrongAddress):
        ModbusReader(request).feed(from_other)
    bad = reply[:-1] + bytes([reply[-1] ^ 0xFF])
    with pytest.raises(RemoteProtocolError):
        ModbusReader(request).feed(bad)


_TYPES = st.sampled_from(list(DataType))


@settings(max_examples=300, deadline=None)
@given(
    type_=_TYPES,
    words=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    scale=st.fractions(min_value=Fraction(1, 1000), max_value=1000, max_denominator=1000),
    little=st.booleans(),
    ct=st.integers(1, 600),
    pt=st.integers(1, 100),
)
def test_hot_path_decoding_equals_the_codec(
    type_: DataType, words: tuple[int, int], scale: Fraction, little: bool, ct: int, pt: int
) -> None:
    spec = RegisterSpec(Quantity.ENERGY_IMPORT, 10, type_, "kWh", scale)
    order = WordOrder.LITTLE if little else WordOrder.BIG
    regs = list(words[: type_.words])
    field = _Field.of(spec, 10, order, ct, pt)
    try:
        expected = decode_register(spec, regs, order, ct=ct, pt=pt)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):
            field.decode(regs)
        return
    assert field.decode(regs) == expected


def test_hot_path_for_every_profile() -> None:
    for name in profiles.names():
        p = profiles.get(name)
        d = ModbusDriver(Meter("m", "mb", unit_id=1, profile=name, ct_ratio=60), MB_BUS)
        transactions = d.plan(ReadJob("m"))
        replies = []
        for i, read in enumerate(d.poll_plan.requests):
            registers = tuple((0x4170 + 3 * k + i) & 0xFFFF for k in range(read.count))
            replies.append((transactions[i], ReadReply(1, p.function_code, registers)))
        got = d.finish(ReadJob("m"), replies, 0)
        regs = [r.registers for _, r in replies]  # type: ignore[attr-defined]
        assert got.reading is not None
        assert got.reading.values == d.poll_plan.decode(regs, p.word_order, ct=60, pt=1), name


# --- poller bookkeeping on made-up results ----------------------------------------


class Journal:
    def __init__(self) -> None:
        self.records: list[Reading | MeterEvent] = []

    def submit(self, record: Reading | MeterEvent) -> None:
        self.records.append(record)


def _poller(settings: PollSettings) -> tuple[Poller, Journal]:
    drivers = {
        f"d{i}": Dlt645Driver(Meter(f"d{i}", "dl", address=f"{i:012d}"), DL_BUS) for i in (1, 2)
    }
    journal = Journal()
    clock = ManualClock(datetime(2024, 6, 1, 4, tzinfo=UTC))
    return Poller("dl", drivers, journal, clock, settings), journal


def test_backoff_of_a_flagged_meter_and_continuous_round_robin() -> None:
    p, journal = _poller(PollSettings(interval=0, fail_after=2, backoff_base=10, backoff_max=35))
    now = 100.0
    # the meter numbers are checked first, then polls go round
    order = []
    for _ in range(6):
        job, wait = p.next_job(now)
        assert job is not None and wait == 0
        order.append((job.meter_id, job.dis))
        if job.dis:
            p.job_done(job, JobResult(job.meter_id, True, {0x04000402: job.meter_id}), now)
        else:
            ok = job.meter_id == "d1"
            p.job_done(job, JobResult(job.meter_id, ok, cause=None if ok else "no-answer"), now)
        now += 1
    assert order[:2] == [("d1", (0x04000402,)), ("d2", (0x04000402,))]
    assert [m for m, _ in order[2:]] == ["d1", "d2", "d1", "d2"]
    state = p.meters["d2"]
    assert state.flagged and state.cause == "no-answer"
    assert state.due == pytest.approx(105 + 10)
    delays = []
    for _ in range(4):
        p.job_done(ReadJob("d2"), JobResult("d2", False, cause="no-answer"), now)
        delays.append(state.due - now)
    assert delays == [20, 35, 35, 35]  # doubling, capped
    assert p.meters["d2"].driver.flagged is False  # set when a probe is handed out
    (event,) = [r for r in journal.records if isinstance(r, MeterEvent)]
    assert event.detail["cause"] == "no-answer" and event.detail["polls"] == 2
    assert p.next_job(now)[0] == ReadJob("d1")


def test_a_negative_answer_is_not_a_communication_failure() -> None:
    p, journal = _poller(PollSettings(interval=5, fail_after=1))
    for _ in range(3):
        p.job_done(ReadJob("d1"), JobResult("d1", False, cause="negative:02"), 0.0)
    assert not p.meters["d1"].flagged and journal.records == []
    p.job_done(ReadJob("d1", (0x04000402,)), JobResult("d1", False, cause="negative:02"), 0.0)
    assert p.meters["d1"].number_due is None  # no number: never asked again


def test_a_meter_s_own_interval_and_its_probes() -> None:
    drivers = {
        "fast": Dlt645Driver(Meter("fast", "dl", address="1".zfill(12), poll_interval_s=2), DL_BUS),
        "slow": Dlt645Driver(
            Meter("slow", "dl", address="2".zfill(12), poll_interval_s=600), DL_BUS
        ),
        "usual": Dlt645Driver(Meter("usual", "dl", address="3".zfill(12)), DL_BUS),
    }
    clock = ManualClock(datetime(2024, 6, 1, 4, tzinfo=UTC))
    settings = PollSettings(interval=30, fail_after=1, backoff_base=10, backoff_max=900)
    p = Poller("dl", drivers, Journal(), clock, settings)
    assert [p.meters[m].interval for m in drivers] == [2, 600, 30]
    for m in drivers:
        p.job_done(ReadJob(m), JobResult(m, True), 100.0)
    assert [p.meters[m].due for m in drivers] == [102, 700, 130]
    # a failed number check is retried after the meter's interval (at least a minute)
    p.job_done(ReadJob("slow", (0x04000402,)), JobResult("slow", False, cause="no-answer"), 0.0)
    assert p.meters["slow"].number_due == 600
    # flagged: the fast meter backs off from backoff_base; the slow one never comes
    # back sooner than its own interval, and its probes double from there (capped at 900,
    # but never below its interval)
    delays: dict[str, list[float]] = {"fast": [], "slow": []}
    for m, got in delays.items():
        for _ in range(4):
            p.job_done(ReadJob(m), JobResult(m, False, cause="no-answer"), 1000.0)
            got.append(p.meters[m].due - 1000.0)
        assert p.meters[m].flagged
    assert delays == {"fast": [10, 20, 40, 80], "slow": [600, 900, 900, 900]}
