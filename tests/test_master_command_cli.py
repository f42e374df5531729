"""``gateway master keys`` and ``gateway master command`` as processes, end to end
through a real Mosquitto to a running gateway: the key pair, a signed top-up applied
once, a forged one refused (exit 1), no reply in time (exit 2)."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path

from polling import START
from test_commands import gateway, state

from gateway.clock import ManualClock
from gateway.mosquitto import Mosquitto

AMOUNT = 1_000_000  # 100 yuan


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def keys(out: Path) -> bytes:
    done = cli("master", "keys", "--out", str(out))
    assert done.returncode == 0, done.stderr
    public = base64.b64decode(done.stdout.strip(), validate=True)
    assert len(public) == 32
    return public


def send(broker: Mosquitto, key: Path, *extra: str, gateway_id: str = "test-gw") -> list[str]:
    return [
        "master",
        "command",
        "--broker",
        f"{broker.host}:{broker.port}",
        "--gateway",
        gateway_id,
        "--key",
        str(key),
        *extra,
    ]


def test_keys_are_written_once_and_the_private_one_is_private(tmp_path: Path) -> None:
    public = keys(tmp_path / "k")
    private = tmp_path / "k" / "master-command.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    pem = private.read_bytes()
    again = cli("master", "keys", "--out", str(tmp_path / "k"))
    assert again.returncode == 2
    assert "exists" in again.stderr
    assert private.read_bytes() == pem  # not replaced
    forced = cli("master", "keys", "--out", str(tmp_path / "k"), "--force")
    assert forced.returncode == 0
    assert base64.b64decode(forced.stdout.strip()) != public
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_help() -> None:
    for action in ("keys", "command"):
        done = cli("master", action, "--help")
        assert done.returncode == 0
        assert "usage: gateway master " + action in done.stdout


def test_a_signed_top_up_through_the_cli(broker: Mosquitto, tmp_path: Path) -> None:
    public = keys(tmp_path / "keys")
    key = tmp_path / "keys" / "master-command.key"
    keys(tmp_path / "forger")
    forged = tmp_path / "forger" / "master-command.key"
    top_up = ("--kind", "top-up", "--text", "account=A", "--arg", f"amount={AMOUNT}")
    top_up += ("--arg", "top_up_id=9100", "--timeout", "20")  # digits: still an id
    with gateway(tmp_path / "gw", broker, public, ManualClock(START)) as rt:
        before = state(rt)
        done = cli(*send(broker, key, *top_up))
        assert done.returncode == 0, done.stderr
        line = done.stdout.strip()
        assert line.startswith("OK top-up "), line
        assert f"balance={(before[0] or 0) + AMOUNT}" in line
        assert 'top_up_id="9100"' in line
        assert state(rt) == ((before[0] or 0) + AMOUNT, before[1] + 1, before[2] + 1)

        # A new command with the same top-up id: OK, the ledger's original entry.
        done = cli(*send(broker, key, *top_up, "--json"))
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        assert reply["status"] == "OK" and reply["result"]["duplicate"] is True
        assert state(rt)[:2] == ((before[0] or 0) + AMOUNT, before[1] + 1)

        done = cli(*send(broker, forged, *top_up))
        assert done.returncode == 1
        assert done.stdout.startswith("REFUSED top-up ") and "BAD_SIGNATURE" in done.stdout
        assert state(rt)[:2] == ((before[0] or 0) + AMOUNT, before[1] + 1)

        done = cli(*send(broker, key, "--kind", "back-fill", "--timeout", "1", gateway_id="none"))
        assert done.returncode == 2
        assert "no reply" in done.stderr

        done = cli(*send(broker, key, "--kind", "top-up", "--arg", "amount"))
        assert done.returncode == 2  # usage
