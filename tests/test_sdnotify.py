"""The systemd notify protocol against a fake notify socket: the messages on the wire,
``Runtime.healthy``, and a real ``gateway run`` process (READY, then WATCHDOG pings at
half the watchdog timeout, none once a bus thread died, STOPPING at SIGTERM)."""

from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cmd.run import supervise
from gateway.sdnotify import Notifier


class FakeSystemd:
    """A notify socket as systemd binds it; collects (monotonic time, fields) per datagram."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def times(self, key: str, value: str = "1") -> list[float]:
        with self._lock:
            return [t for t, f in self.messages if f.get(key) == value]

    def statuses(self) -> list[str]:
        with self._lock:
            return [f["STATUS"] for _, f in self.messages if "STATUS" in f]

    def wait_for(self, key: str, timeout: float, value: str = "1") -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.times(key, value)
            if got:
                return got[0]
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value} within {timeout} s: {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def fake_systemd() -> Iterator[FakeSystemd]:
    # a short directory: a socket path has at most 107 bytes
    where = tempfile.mkdtemp(prefix="sdn")
    fake = FakeSystemd(os.path.join(where, "notify"))
    yield fake
    fake.close()
    shutil.rmtree(where)


# --- the protocol ------------------------------------------------------------------------


def test_messages_on_the_wire_to_an_abstract_socket() -> None:
    fake = FakeSystemd(f"@gateway-test-{uuid.uuid4().hex}")
    try:
        n = Notifier.from_environ({"NOTIFY_SOCKET": fake.address, "WATCHDOG_USEC": "30000000"})
        assert n.enabled and n.watchdog_period() == 15.0
        assert n.ready("polling\n2 buses")  # a newline would end the STATUS field
        assert n.watchdog()
        assert n.status("running")
        assert n.stopping()
        deadline = time.monotonic() + 2
        while len(fake.messages) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [f for _, f in fake.messages] == [
            {"READY": "1", "STATUS": "polling 2 buses"},
            {"WATCHDOG": "1"},
            {"STATUS": "running"},
            {"STOPPING": "1"},
        ]
        n.close()
    finally:
        fake.close()


def test_environment_decides_what_is_on() -> None:
    off = Notifier.from_environ({})
    assert not off.enabled and off.watchdog_period() is None and not off.ready()
    # the watchdog belongs to another process (a parent that forwarded its environment)
    other = Notifier.from_environ(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    )
    assert other.enabled and other.watchdog_period() is None
    ours = Notifier.from_environ(
        {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert ours.watchdog_period() == 0.5
    for bad in ("", "0", "-5", "soon"):
        assert (
            Notifier.from_environ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": bad}).watchdog_period()
            is None
        )
    # a watchdog without a socket to ping is off
    assert Notifier.from_environ({"WATCHDOG_USEC": "1000000"}).watchdog_period() is None


def test_an_unreachable_socket_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier(str(tmp_path / "nobody"), 1_000_000)
    with caplog.at_level(logging.WARNING, "gateway.sdnotify"):
        assert not n.ready()
        assert not n.watchdog()
    assert len(caplog.records) == 1 and "nobody" in caplog.records[0].getMessage()
    n.close()


# --- the main loop -------------------------------------------------------------------------


class FlakyRuntime:
    """Stands in for Runtime: ``healthy()`` is whatever the test sets."""

    def __init__(self) -> None:
        self.ok = True

    def healthy(self) -> bool:
        return self.ok


def test_supervise_pings_only_while_healthy(fake_systemd: FakeSystemd) -> None:
    n = Notifier(fake_systemd.address, 200_000)  # 0.2 s timeout: a ping every 0.1 s
    rt, stop = FlakyRuntime(), threading.Event()
    loop = threading.Thread(target=supervise, args=(rt, n, stop))
    loop.start()
    try:
        time.sleep(0.55)
        rt.ok = False
        sick = time.monotonic()
        time.sleep(0.6)
        rt.ok = True
        well = time.monotonic()
        time.sleep(0.35)
    finally:
        stop.set()
        loop.join(5)
    pings = fake_systemd.times("WATCHDOG")
    before = [t for t in pings if t < sick]
    assert len(before) >= 4
    # the loop checks the health before each ping: at most one ping in flight
    assert not [t for t in pings if sick + 0.15 < t < well]
    assert len([t for t in pings if t > well]) >= 2
    assert fake_systemd.statuses() == [
        "unhealthy: a bus thread or the store writer stopped",
        "running",
    ]
    n.close()


# --- Runtime.healthy ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_runtime_is_unhealthy_when_a_bus_thread_or_the_store_writer_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polling import START, gateway_yaml, meters, sim_yaml, wait_for

    from gateway.clock import ManualClock
    from gateway.config import parse_config
    from gateway.poller import Poller, PollSettings
    from gateway.runtime import Runtime
    from gateway.sim.config import parse_sim_config
    from gateway.sim.service import Simulator

    buses = [("dl", "dlt645", 38400), ("mb", "modbus", 38400)]
    ms = meters("dl", "dlt645", 1, turnaround_ms=5) + meters("mb", "modbus", 1)
    clock = ManualClock(START)
    die = threading.Event()
    original = Poller.next_job

    def next_job(self: Poller, now: float) -> object:
        if self.bus_name == "dl" and die.is_set():
            raise RuntimeError("injected: bus dl dies")
        return original(self, now)

    monkeypatch.setattr(Poller, "next_job", next_job)
    with Simulator(
        parse_sim_config(sim_yaml(buses, ms), "s.yaml", link_dir=str(tmp_path)), clock
    ) as sim:
        config = parse_config(gateway_yaml(sim, buses, ms), "gw.yaml")
        for attempt in ("bus", "writer"):
            rt = Runtime(
                config,
                store_path=tmp_path / f"{attempt}.db",
                clock=clock,
                # one poll each, then the buses idle: nothing touches the store meanwhile
                settings=PollSettings(interval=60),
                status_socket=None,
            )
            assert not rt.healthy()  # not started
            with rt:
                wait_for(
                    lambda rt=rt: all(p.readings > 0 for p in rt.pollers.values()),
                    10,
                    "readings",
                )
                time.sleep(0.1)
                assert rt.healthy()
                if attempt == "bus":
                    die.set()  # its thread asks the scheduler at least once a second
                    wait_for(lambda rt=rt: not rt.healthy(), 3, "the dead bus seen")
                    assert rt.store is not None and rt.store.writer.stats().alive
                else:
                    assert rt.store is not None
                    rt.store.writer.close()  # returns once its thread ended
                    assert not rt.healthy()
                    assert all(b._thread and b._thread.is_alive() for b in rt.buses.values())
            die.clear()
            assert not rt.healthy()  # stopped


# --- gateway run as a process ----------------------------------------------------------------

SIM = """
link_dir: {dir}
buses:
  - {{name: d, link: d, protocol: dlt645, baud: 38400, parity: E}}
  - {{name: m, link: m, protocol: modbus, baud: 38400, parity: E}}
meters:
  - {{id: d1, bus: d, address: "000000000001", turnaround_ms: 5}}
  - {{id: m1, bus: m, unit_id: 1, profile: sdm120, turnaround_ms: 5}}
"""
GATEWAY = """
gateway_id: notify-gw
serial_buses:
  - {{name: d, port: {dir}/d, protocol: dlt645, baud: 38400, parity: E, timeout: 0.05}}
  - {{name: m, port: {dir}/m, protocol: modbus, baud: 38400, parity: E}}
meters:
  - {{id: d1, bus: d, address: "000000000001"}}
  - {{id: m1, bus: m, unit_id: 1, profile: sdm120}}
uplink: {{host: 127.0.0.1, port: {port}}}
"""
# ``gateway run`` itself, with one fault injected: once the file named by
# $KILL_BUS_D exists, bus d's scheduler raises and its thread dies.
RUN_WITH_FAULT = """
import os, sys
from pathlib import Path
from gateway import poller
from gateway.cli import main

trigger = Path(os.environ["KILL_BUS_D"])
original = poller.Poller.next_job

def next_job(self, now):
    if self.bus_name == "d" and trigger.exists():
        raise RuntimeError("injected: bus d dies")
    return original(self, now)

poller.Poller.next_job = next_job
sys.exit(main(sys.argv[1:]))
"""
WATCHDOG_USEC = 600_000  # WatchdogSec=0.6: the gateway must ping every 0.3 s


def test_gateway_run_notifies_and_feeds_the_watchdog_until_a_bus_dies(
    tmp_path: Path, fake_systemd: FakeSystemd
) -> None:
    (tmp_path / "sim.yaml").write_text(SIM.format(dir=tmp_path))
    # the uplink's broker is unreachable all along: that must not stop the watchdog
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    (tmp_path / "gw.yaml").write_text(GATEWAY.format(dir=tmp_path, port=closed_port))
    trigger = tmp_path / "kill-bus-d"
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "sim", "--config", str(tmp_path / "sim.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = None
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "m").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = dict(os.environ)
        env.update(
            NOTIFY_SOCKET=fake_systemd.address,
            WATCHDOG_USEC=str(WATCHDOG_USEC),
            KILL_BUS_D=str(trigger),
            JOURNAL_STREAM="8:12345",  # as systemd sets it: stderr goes to the journal
        )
        env.pop("WATCHDOG_PID", None)
        started = time.monotonic()
        run = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RUN_WITH_FAULT,
                "run",
                "--config",
                str(tmp_path / "gw.yaml"),
                "--store",
                str(tmp_path / "gw.db"),
                "--socket",
                str(tmp_path / "s.sock"),
                "--interval",
                "0",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            ready = fake_systemd.wait_for("READY", 15)
        except AssertionError:
            run.kill()
            raise AssertionError(run.communicate()[1]) from None
        assert ready > started
        assert fake_systemd.statuses()[0] == "polling 2 buses, 2 meters"
        time.sleep(2.0)
        healthy_pings = fake_systemd.times("WATCHDOG")
        assert healthy_pings and healthy_pings[0] >= ready  # no ping before READY
        gaps = [b - a for a, b in itertools.pairwise(healthy_pings)]
        # every half period (0.3 s), never as late as the timeout (0.6 s), never spamming
        assert len(healthy_pings) >= 5, healthy_pings
        assert max(gaps) < WATCHDOG_USEC / 1e6, gaps
        assert min(gaps) > WATCHDOG_USEC / 1e6 * 0.4, gaps

        trigger.touch()
        killed = time.monotonic()
        fake_systemd.wait_for("STATUS", 5, "unhealthy: a bus thread or the store writer stopped")
        time.sleep(1.5)
        late = [t for t in fake_systemd.times("WATCHDOG") if t > killed + 0.5]
        # the bus thread dies within milliseconds; at most one ping was already on its way
        assert late == [], (killed, fake_systemd.times("WATCHDOG"))
        assert time.monotonic() - fake_systemd.times("WATCHDOG")[-1] > WATCHDOG_USEC / 1e6

        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=10)
        assert run.returncode == 0, err
        fake_systemd.wait_for("STOPPING", 2)
        assert "bus d stopped by an error" in err
        assert "RuntimeError: injected: bus d dies" in err
        assert (
            "unhealthy: a bus thread or the store writer stopped; watchdog pings stop"
            " (systemd will restart the gateway)" in err
        )
        assert "stopped (SIGTERM)" in err
        assert "uplink: " in err and "(retrying)" in err  # it ran, without a broker
        # one line per event, no timestamp of its own under journald
        lines = err.splitlines()
        assert all(re.match(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) gateway", x) for x in lines), err
        (crash,) = [x for x in lines if "bus d stopped by an error" in x]
        assert " | Traceback (most recent call last): | " in crash
        assert crash.endswith("RuntimeError: injected: bus d dies")
    finally:
        if run is not None and run.returncode is None:
            run.kill()
            run.communicate()
        sim.send_signal(signal.SIGTERM)
        sim.communicate(timeout=10)
