"""``gateway run`` as a process against ``gateway sim`` as a process: ``gateway status``
answers, SIGTERM stops both cleanly, and the store records the start and the stop."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from gateway import __version__, fastpath
from gateway.protocols.batch import HealthKind
from gateway.protocols.quantities import EventCode, Reading
from gateway.store.journal import JournalReader, Kind

SIM = """
link_dir: {dir}
buses:
  - {{name: d, link: d, protocol: dlt645, baud: 38400, parity: E}}
  - {{name: m, link: m, protocol: modbus, baud: 38400, parity: E}}
meters:
  - {{id: d1, bus: d, address: "000000000001", turnaround_ms: 5}}
  - {{id: d2, bus: d, address: "000000000002", turnaround_ms: 5, faults: {{silent: true}}}}
  - {{id: m1, bus: m, unit_id: 1, profile: sdm120, turnaround_ms: 5}}
"""
GATEWAY = """
gateway_id: cli-gw
serial_buses:
  - {{name: d, port: {dir}/d, protocol: dlt645, baud: 38400, parity: E, timeout: 0.05}}
  - {{name: m, port: {dir}/m, protocol: modbus, baud: 38400, parity: E}}
meters:
  - {{id: d1, bus: d, address: "000000000001"}}
  - {{id: d2, bus: d, address: "000000000002"}}
  - {{id: m1, bus: m, unit_id: 1, profile: sdm120}}
uplink: {{host: localhost}}
"""


def gateway(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def test_run_and_status_against_a_simulator_process(tmp_path: Path) -> None:
    (tmp_path / "sim.yaml").write_text(SIM.format(dir=tmp_path))
    (tmp_path / "gw.yaml").write_text(GATEWAY.format(dir=tmp_path))
    sock, store = tmp_path / "s.sock", tmp_path / "gw.db"
    sim = subprocess.Popen(
        gateway("sim", "--config", str(tmp_path / "sim.yaml")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = None
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "m").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        run = subprocess.Popen(
            gateway(
                "run",
                "--config",
                str(tmp_path / "gw.yaml"),
                "--store",
                str(store),
                "--socket",
                str(sock),
                "--interval",
                "0",
                "--fail-after",
                "2",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        answer: dict[str, object] = {}
        while time.monotonic() < deadline + 10:
            time.sleep(0.2)
            got = subprocess.run(
                gateway("status", "--socket", str(sock), "--json"), capture_output=True, text=True
            )
            if got.returncode == 0:
                answer = json.loads(got.stdout)
                buses = answer["buses"]
                assert isinstance(buses, list)
                if all(b["poll"]["readings"] > 0 for b in buses) and any(
                    b["poll"]["flagged"] for b in buses
                ):
                    break
        buses = answer["buses"]
        assert isinstance(buses, list)
        assert {b["name"] for b in buses} == {"d", "m"}
        (d,) = [b for b in buses if b["name"] == "d"]
        assert d["poll"]["flagged"] == [
            {"meter": "d2", "cause": "no-answer", "failures": 2, "error": "no reply within 50 ms"}
        ]
        human = subprocess.run(
            gateway("status", "--socket", str(sock)), capture_output=True, text=True
        )
        assert human.returncode == 0
        assert "bus m modbus 38400 8E1 up:" in human.stdout
        assert "flagged d2: no-answer (2 polls)" in human.stdout
        # gateway run attaches the collection tasks; the host clock is not trusted here
        # unless NTP synchronized it, and the status says which
        assert "tasks" in answer
        assert ("tasks: suspended until the time is trusted" in human.stdout) != bool(
            answer["time_trusted"]
        )
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=10)
        assert run.returncode == 0, err
        assert "event COMM_FAILURE meter=d2 cause=no-answer" in err
        assert "stopped (SIGTERM)" in err
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        sim.send_signal(signal.SIGTERM)
        sim.communicate(timeout=10)
    assert sim.returncode == 0
    assert not sock.exists()
    down = subprocess.run(gateway("status", "--socket", str(sock)), capture_output=True, text=True)
    assert down.returncode == 2 and "no gateway answers" in down.stderr
    with JournalReader(store) as reader:
        health = [r for _, r in reader.records(Kind.HEALTH)]
        readings = [r for _, r in reader.records(Kind.READINGS, limit=100_000)]
        events = [r for _, r in reader.records(Kind.EVENTS)]
    power = [r.values for r in health if r.kind == HealthKind.POWER]
    assert [p["event"] for p in power] == ["start", "stop"]
    # the start record says what the gateway runs on
    start = power[0]
    assert start["version"] == __version__
    assert start["python"] == ".".join(map(str, sys.version_info[:3]))
    assert start["sqlite"] == sqlite3.sqlite_version
    assert start["pymodbus"] == version("pymodbus")
    assert start["pyserial"] == version("pyserial")
    assert start["paho_mqtt"] == version("paho-mqtt")
    assert start["fastpath"] in ("unused", fastpath.IMPLEMENTATION)
    # and the store its use at start (then hourly)
    [usage] = [r.values for r in health if r.kind == HealthKind.STORAGE]
    assert usage["event"] == "usage" and isinstance(usage["used_bytes"], int)
    assert usage["unacknowledged_readings"] == 0 and usage["used_bytes"] > 0
    assert {r.meter for r in readings if isinstance(r, Reading)} == {"d1", "m1"}
    assert [(e.meter, e.code) for e in events] == [("d2", EventCode.COMM_FAILURE)]


def test_versions_read_without_importing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.versions import dist_version, versions

    got = versions(fastpath=True)
    assert got["fastpath"] == fastpath.IMPLEMENTATION
    assert ("fastpath_reason" in got) == (fastpath.UNAVAILABLE_REASON is not None)
    assert got["pymodbus"] == version("pymodbus")
    # a distribution is found by its .dist-info name, not one that merely starts alike
    for name in ("pyserial_asyncio-0.6.dist-info", "Paho_MQTT-9.1.dist-info", "pyserial-x"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path / "missing"), str(tmp_path)])
    assert dist_version("paho-mqtt") == "9.1"
    assert dist_version("pyserial") == "absent"


def test_a_bad_configuration_starts_nothing(tmp_path: Path) -> None:
    # every mistake named by file, line and column, exit 2, and no store, socket or
    # thread made: the gateway does not start on a half-understood configuration
    bad = Path(__file__).parent / "data" / "config" / "bad_several.yaml"
    store, sock = tmp_path / "gw.db", tmp_path / "s.sock"
    run = subprocess.run(
        gateway("run", "--config", str(bad), "--store", str(store), "--socket", str(sock)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert [line.split(": ")[:2] for line in lines] == [
        ["gateway run", f"{bad}:7:11"],
        ["gateway run", f"{bad}:11:14"],
        ["gateway run", f"{bad}:14:3"],
    ]
    check = subprocess.run(gateway("config", "check", str(bad)), capture_output=True, text=True)
    assert [f"gateway run: {line}" for line in check.stderr.splitlines()] == lines  # the same
    assert "did you mean 'port'?" in lines[2]
    assert run.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no store, no socket
