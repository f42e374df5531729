"""The README's first command runs ``gateway demo``: it must work end to end, from the
simulated meters through the gateway, its uplink and Mosquitto to the master's store."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cmd.demo import demo_config_path, demo_sim_config_path
from gateway.config import load_config
from gateway.mosquitto import Mosquitto
from gateway.sim.config import load_sim_config
from gateway.store import JournalReader, Kind


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "demo", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_demo_polls_the_simulator_and_delivers_the_journal(tmp_path: Path) -> None:
    result = _demo("--seconds", "6", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "simulator: 2 buses, 35 meters" in out
    assert "started a private Mosquitto" in out
    assert "  rs485-2  modbus 9600 8N1: 32 meters in 2 areas (T1, T2)" in out
    # the live view: both buses polled, nobody flagged on a healthy bench; readings/s
    # per bus and in total over the view's interval
    for bus, meters in (("rs485-1  2400 8E1", 3), ("rs485-2  9600 8N1", 32)):
        assert re.search(rf"  {bus} +{meters} meters .* readings +\d+\.\d/s  flagged: none", out)
    rates = [float(r) for r in re.findall(r"total +\d+ readings, (\d+\.\d) readings/s over", out)]
    assert rates and max(rates) > 0
    journal = re.search(r"journal: (\d+) readings", out)
    assert journal is not None
    stored = int(journal.group(1))
    assert stored > 0
    with JournalReader(tmp_path / "gateway.db") as reader:
        assert reader.count(Kind.READINGS) == stored
    # the live view shows the uplink and the master while polling
    assert "uplink   broker 127.0.0.1:" in out and " connected  outbox " in out
    assert re.search(r"master +\d+ readings stored in \d+ batches", out)
    assert f"master: {stored} readings stored, each once, all equal to the journal" in out
    # the money engine: signed top-ups from the master applied, the ledger re-adds
    for account, amount in (("A101", "0.0300"), ("C201", "100.0000"), ("D301", "100.0000")):
        assert f"master: signed top-up {account} +{amount} yuan -> ok" in out
    assert re.search(r"  A101 +-?\d+\.\d{4} yuan  (alarm2|due_to_trip|may_close|normal) ", out)
    assert "  D301 " in out and "(+14 without a relay)" in out
    assert out.rstrip().endswith("ledger: every balance re-adds from its entries")


def test_demo_uses_a_given_broker(broker: Mosquitto, tmp_path: Path) -> None:
    result = _demo("--seconds", "3", "--broker", f"{broker.host}:{broker.port}")
    assert result.returncode == 0, result.stderr
    assert "private Mosquitto" not in result.stdout
    assert "all equal to the journal" in result.stdout


def test_demo_without_broker_is_one_line_error() -> None:
    with Mosquitto() as stopped:
        port = stopped.port
    result = _demo("--seconds", "2", "--broker", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("gateway demo: cannot connect to the broker")
    assert len(result.stderr.strip().splitlines()) == 1


# --- Ctrl-C -------------------------------------------------------------------------


def _session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` (the demo's own, as a terminal's job would be)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:  # state ppid pgrp session ...
            out.append(int(entry.name))
    return out


def _alive(pid: int, name: str) -> bool:
    try:
        return name in (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.fixture
def demo_job(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """``gateway demo`` until Ctrl-C, as a terminal runs it: its own session and
    process group, to which the terminal's Ctrl-C (SIGINT) goes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--seconds", "0", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _until(proc: subprocess.Popen[str], pattern: str) -> tuple[str, re.Match[str]]:
    """Demo output up to the first line matching ``pattern``."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if found := re.search(pattern, line):
            return "".join(seen), found
    raise AssertionError(f"the demo ended before {pattern!r}:\n{''.join(seen)}")


def _broker_of(out: str) -> tuple[int, int]:
    started = re.search(r"started a private Mosquitto on 127\.0\.0\.1:(\d+) \(pid (\d+)", out)
    assert started is not None, out
    return int(started.group(1)), int(started.group(2))


def _nothing_left(proc: subprocess.Popen[str], port: int, pid: int, work: Path) -> None:
    assert _session_members(proc.pid) == []
    assert not _alive(pid, "mosquitto")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert list((work / "links").iterdir()) == []  # the simulator's links are gone


def test_ctrl_c_stops_the_demo_cleanly_and_checks_the_master(
    demo_job: subprocess.Popen[str], tmp_path: Path
) -> None:
    # two rounds of the 32-meter Modbus line in the view, readings at the master
    head, _ = _until(
        demo_job, r"  rs485-2  9600 8N1 +32 meters .* (6[4-9]|[7-9]\d|\d{3,}) readings"
    )
    more, _ = _until(demo_job, r"  master +[1-9]\d* readings stored")
    port, pid = _broker_of(head)
    assert _alive(pid, "mosquitto")
    os.killpg(demo_job.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    rest, err = demo_job.communicate(timeout=120)
    out = head + more + rest
    assert demo_job.returncode == 0, out + err
    assert "Traceback" not in err and err.strip() == "", err
    assert "(Ctrl-C: stopping;" in out and "Ctrl-C again aborts faster" in out
    journal = re.search(r"journal: (\d+) readings\n", out)
    assert journal is not None, out
    stored = int(journal.group(1))
    assert f"master: {stored} readings stored, each once, all equal to the journal" in out
    assert "master: rs485-2 32 of 32 meters read (areas T1, T2)" in out
    assert "readings/s on average over the" in out
    assert out.rstrip().endswith("ledger: every balance re-adds from its entries")
    _nothing_left(demo_job, port, pid, tmp_path)

    # the demo polled the 32 meters of the Modbus line, in two areas, gates included:
    # from the journal and the packaged demo configuration and bench
    config = load_config(demo_config_path())
    modbus = {m.id: m for m in config.meters if m.bus == "rs485-2"}
    assert len(modbus) == 32
    assert config.bus("rs485-2").protocol == "modbus" and config.bus("rs485-2").baud == 9600
    with JournalReader(tmp_path / "gateway.db") as reader:
        assert reader.count(Kind.READINGS) == stored
        read = {r.meter for _, r in reader.readings(after=0, limit=100_000)}
    assert set(modbus) <= read
    assert {modbus[m].area for m in modbus} == {"T1", "T2"}
    gates = {m.area: m.id for m in modbus.values() if m.role == "gate"}
    assert set(gates) == {"T1", "T2"}
    sim = load_sim_config(demo_sim_config_path(), link_dir=str(tmp_path))
    assert {m.id for m in sim.meters if m.bus == "rs485-2"} == set(modbus)
    for area in sim.areas:  # both areas have their gate and a known line loss
        assert area.gate == gates[area.id] and area.loss_permille > 0
    assert {a.id for a in sim.areas} == {"T1", "T2"}


def test_second_ctrl_c_aborts_without_waiting(
    demo_job: subprocess.Popen[str], tmp_path: Path
) -> None:
    head, _ = _until(demo_job, r"  rs485-2  9600 8N1 +32 meters .* [1-9]\d* readings")
    port, pid = _broker_of(head)
    os.killpg(demo_job.pid, signal.SIGINT)
    more, _ = _until(demo_job, r"Ctrl-C: stopping")
    os.killpg(demo_job.pid, signal.SIGINT)
    rest, err = demo_job.communicate(timeout=120)
    out = head + more + rest
    assert demo_job.returncode == 130, out + err
    assert err.strip() == "", err
    assert "(Ctrl-C again: aborted;" in out
    assert out.rstrip().endswith("aborted: the master's store was not checked")
    _nothing_left(demo_job, port, pid, tmp_path)


def test_ctrl_c_at_once_stops_before_polling_much(
    demo_job: subprocess.Popen[str], tmp_path: Path
) -> None:
    head, _ = _until(demo_job, r"started a private Mosquitto")
    port, pid = _broker_of(head)
    os.killpg(demo_job.pid, signal.SIGINT)  # while the simulator and gateway start
    rest, err = demo_job.communicate(timeout=120)
    out = head + rest
    assert demo_job.returncode == 0, out + err
    assert err.strip() == "", err
    assert "(top-ups skipped: stopping)" in out
    assert "signed top-up" not in out
    assert re.search(r"journal: no readings \(stopped before any\)|all equal to the journal", out)
    assert out.rstrip().endswith("ledger: every balance re-adds from its entries")
    _nothing_left(demo_job, port, pid, tmp_path)
