"""The README's first command runs ``gateway demo``: it must work end to end, from the
simulated meters through the gateway, its uplink and Mosquitto to the master's store."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gateway.mosquitto import Mosquitto
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
    assert "simulator: 2 buses" in out
    assert "started a private Mosquitto" in out
    # the live view: both buses polled, nobody flagged on a healthy bench
    for bus in ("rs485-1  2400 8E1", "rs485-2  9600 8N1"):
        assert bus in out
    assert "flagged: none" in out
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
