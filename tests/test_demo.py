"""The README's first command runs ``gateway demo``: it must work end to end."""

from __future__ import annotations

import re
import subprocess
import sys

from gateway.mosquitto import Mosquitto


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_on_embedded_defaults_delivers_every_reading() -> None:
    result = _demo()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "gateway bjgc-dr1: 2 buses, 8 meters" in out
    assert "started a private Mosquitto" in out
    # 8 meters x 240 readings (1 h every 15 s), all received and equal
    assert "1920 readings, each batch decoded alone, all equal to what was sent" in out
    size = re.search(r"([0-9.]+) bytes/reading", out)
    assert size is not None and float(size.group(1)) <= 10
    assert "ENERGY_COMBINED 12345670" in out  # domain.md's worked reply, 12345.67 kWh


def test_demo_uses_a_given_broker(broker: Mosquitto) -> None:
    result = _demo("--broker", f"{broker.host}:{broker.port}", "--hours", "2", "--seed", "7")
    assert result.returncode == 0, result.stderr
    assert "private Mosquitto" not in result.stdout
    assert "3840 readings, each batch decoded alone, all equal" in result.stdout


def test_demo_without_broker_is_one_line_error() -> None:
    with Mosquitto() as stopped:
        port = stopped.port
    result = _demo("--broker", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("gateway demo: cannot connect to the broker")
    assert len(result.stderr.strip().splitlines()) == 1
