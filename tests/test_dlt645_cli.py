"""``gateway frame``: decode prints one JSON object per frame; encode prints hex."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gateway.cli import COMMANDS, main

REPLY = "68 12 90 78 56 34 12 68 91 08 33 33 33 33 9A 78 56 34 87 16"
VOLTS = "68 12 90 78 56 34 12 68 91 06 33 34 34 35 34 55 76 16"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["frame", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_decode_several_frames_with_preamble_and_garbage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(capsys, "decode", "FE FE FE FE", REPLY, "00 11", VOLTS)
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 2
    energy, volts = (json.loads(line) for line in lines)
    assert energy["control"] == 0x91
    assert energy["address"] == "123456789012"
    assert energy["di"] == "00000000"
    assert energy["value"] == 12345.67 and energy["unit"] == "kWh"
    assert volts["di"] == "02010100" and volts["unit"] == "V"
    assert '"value": 12345.67,' in lines[0]  # the exact decimal, as sent
    assert '"value": 220.1,' in lines[1]
    assert "skipped 2 bytes" in err


def test_decimals_print_without_float_artefacts(capsys: pytest.CaptureFixture[str]) -> None:
    # 0.1 + 0.2 style trap: 000000.30 kWh, and a trailing zero kept: 50.00 Hz
    energy = "68 12 90 78 56 34 12 68 91 08 33 33 33 33 63 33 33 33 E7 16"
    status, out, _ = run(capsys, "decode", energy.replace(" ", ""))
    assert status == 0
    assert '"value": 0.30,' in out


def test_decode_error_reply_names_its_bits(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "decode", "68 12 90 78 56 34 12 68 D1 01 35 8D 16")
    assert status == 0
    obj = json.loads(out)
    assert obj["control"] == 0xD1 and obj["function"] == 0x11
    assert obj["error"]["no_data"] is True and obj["error"]["authority"] is False
    assert obj["error"]["raw"] == 2


def test_decode_status_word_and_block(capsys: pytest.CaptureFixture[str]) -> None:
    status_word = "68 12 90 78 56 34 12 68 91 06 36 38 33 37 43 43 7B 16"  # bits 4 and 12
    block = (
        "68 12 90 78 56 34 12 68 91 0C 33 32 34 33"  # DI 0001FF00
        " 33 33 34 33 33 43 33 33 98 16"  # total 100.00, t1 10.00
    )
    status, out, _ = run(capsys, "decode", status_word, block)
    assert status == 0
    word, parts = (json.loads(line) for line in out.splitlines())
    assert word["value"]["relay_open"] is True and word["value"]["protect_mode"] is True
    assert word["value"]["pre_trip_alarm"] is False and word["unit"] is None
    assert parts["value"] == {"total": 100.0, "t1": 10.0} and parts["unit"] == "kWh"


def test_decode_shows_frames_it_cannot_interpret(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "decode", "68 12 90 78 56 34 12 68 93 01 33 4D 16")
    assert status == 0
    obj = json.loads(out)
    assert obj["type"] == "InvalidFrame" and "6 data bytes" in obj["invalid"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["read", "--address", "123456789012", "--di", "00000000"],
            "68 12 90 78 56 34 12 68 11 04 33 33 33 33 67 16",
        ),
        (
            ["read", "--address", "123456789012", "--di", "02010100", "--preamble", "4"],
            "FE FE FE FE 68 12 90 78 56 34 12 68 11 04 33 34 34 35 6B 16",
        ),
        (["read-address"], "68 AA AA AA AA AA AA 68 13 00 DF 16"),
        (
            ["time", "--at", "2026-11-22T10:00:00"],
            "68 99 99 99 99 99 99 68 08 06 33 33 43 55 44 59 0F 16",
        ),
        (  # 02:00 UTC is 10:00 in Asia/Shanghai, the meters' default zone
            ["time", "--at", "2026-11-22T02:00:00+00:00"],
            "68 99 99 99 99 99 99 68 08 06 33 33 43 55 44 59 0F 16",
        ),
        (
            [
                "relay",
                "--address",
                "123456789012",
                "--action",
                "trip",
                "--valid-until",
                "2026-11-22T10:05:00",
            ],
            "68 12 90 78 56 34 12 68 1C 10 35 33 33 33 33 33 33 33 4D 33 33 38 43 55 44 59 6C 16",
        ),
    ],
)
def test_encode(capsys: pytest.CaptureFixture[str], args: list[str], expected: str) -> None:
    status, out, _ = run(capsys, "encode", *args)
    assert status == 0
    assert out.strip() == expected


def test_relay_options_reach_the_frame(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys,
        "encode",
        "relay",
        "--address=123456789012",
        "--action=protect-release",
        "--password=123456",
        "--level=04",
        "--operator=87654321",
        "--valid-until=+10m",
    )
    assert status == 0
    status, decoded, _ = run(capsys, "decode", out)
    obj = json.loads(decoded)
    assert obj["action"] == "protect-release"
    assert (obj["level"], obj["password"], obj["operator"]) == ("04", "123456", "87654321")


@pytest.mark.parametrize(
    "line",
    [
        "decode zz",  # not hex
        "decode 68 12 90",  # no whole frame
        "decode " + REPLY.replace("87 16", "88 16"),  # bad checksum only
        "encode read --address 12345 --di 00000000",
        "encode read --address 123456789012 --di 0000",
        "encode time --at yesterday",
        "encode time --at 1999-12-31T23:59:59",
        "encode time --at 2026-01-01T00:00:00 --tz Mars/Olympus",
        "encode relay --address 123456789012 --action trip --valid-until +5m --level 98",
        "encode relay --address 123456789012 --action trip --valid-until +5m --password 12",
    ],
)
def test_bad_input_is_one_line_on_stderr_and_status_2(
    capsys: pytest.CaptureFixture[str], line: str
) -> None:
    status, out, err = run(capsys, *line.split())
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("gateway frame: ")


@pytest.mark.parametrize(
    ("args", "prog", "what"),
    [
        (["decode"], "gateway frame decode", "the following arguments are required: HEX"),
        (
            ["encode", "relay", "--address", "123456789012", "--action", "explode"],
            "gateway frame encode relay",
            "argument --action: invalid choice: 'explode'",
        ),
        (
            ["encode", "read", "--address", "123456789012", "--di", "00000000", "--preamble", "x"],
            "gateway frame encode read",
            "argument --preamble: invalid int value: 'x'",
        ),
        (["encode", "read", "--address", "1", "--di", "1", "extra"], "gateway frame", "unrecog"),
    ],
)
def test_argparse_errors_exit_2_through_the_real_command(
    args: list[str], prog: str, what: str
) -> None:
    # argparse's own errors: one line (no usage block), naming the sub-command, exit 2
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "frame", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"{prog}: error: {what}")
    assert "usage:" not in result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_reports_bad_usage_in_one_line(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # an option no command has: one line naming the command (or the argument it lacks)
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--no-such-option"])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"gateway {command}: error: ")
