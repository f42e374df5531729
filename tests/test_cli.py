"""The command line: --help everywhere, lazy imports, errors as one line and status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.cli import COMMANDS


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


def test_top_level_help_lists_every_command() -> None:
    result = gateway("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name: str) -> None:
    result = gateway(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: gateway " + name in result.stdout


def test_unknown_command_exits_2() -> None:
    result = gateway("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_doctor_reports_the_compiled_fast_path() -> None:
    result = gateway("doctor", "--json", "--require-compiled")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["fastpath"] == "compiled"
    assert info["dependencies"]["pymodbus"].startswith("3.16.")


def test_doctor_require_compiled_fails_on_the_twin() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "--require-compiled"],
        capture_output=True,
        text=True,
        env={"GATEWAY_FASTPATH": "pure", "PATH": ""},
        timeout=60,
    )
    assert result.returncode == 1
    assert "compiled fast path not loaded" in result.stderr


def test_frame_command_does_not_import_network_stacks() -> None:
    code = (
        "import sys; from gateway.cli import _parser; _parser('doctor'); "
        "print(sorted(m for m in ('paho', 'pymodbus', 'serial') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
