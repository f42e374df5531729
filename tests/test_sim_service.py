"""SIM.yaml (located errors), the Simulator service, its control socket, state file and CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from datetime import time as dtime
from pathlib import Path

import pytest
import serial

from gateway import cli
from gateway.clock import ManualClock
from gateway.errors import ConfigError
from gateway.protocols import dlt645
from gateway.sim.config import example_sim_config_path, load_sim_config, parse_sim_config
from gateway.sim.control import request
from gateway.sim.service import Simulator

NOON = datetime(2024, 6, 1, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai

# --- located errors ------------------------------------------------------------------

GOOD_BUS = "buses:\n  - {name: b, protocol: modbus}\n"

M1 = GOOD_BUS + "meters:\n  - {id: m, bus: b, unit_id: 1, "
GEN = M1 + "profile: generic"
DLT = "buses:\n  - {name: d, protocol: dlt645}\nmeters:\n  - {id: m, bus: d, address: "
AREA = "}\n  - {id: c, bus: b, unit_id: 2, profile: generic}\nareas:\n  - {id: a, gate: "

BAD_FILES = [
    # (text, where the error points: the first character of this unique text, message)
    ("buses: []\nmeterz: []\n", "meterz",
     "unknown key 'meterz' in the simulator configuration; did you mean 'meters'?"),
    ("meters: []\n", "meters", "missing required key 'buses'"),
    ("buses:\n  - {name: b, protocol: modbis}\n", "modbis",
     "protocol: must be one of dlt645, modbus"),
    ("buses:\n  - {name: b, protocol: modbus, baud: 1000}\n", "1000", "baud: must be one of"),
    (GOOD_BUS + "meters:\n  - {id: m, bus: c, unit_id: 1}\n", "c, unit",
     "bus: no bus named 'c' (buses: b)"),
    (GOOD_BUS + "meters:\n  - {id: m, bus: b, unit_id: 300, profile: generic}\n", "300",
     "unit_id: must be between 1 and 247"),
    (M1 + "profile: sdm999}\n", "sdm999", "profile: no meter profile 'sdm999'"),
    (M1 + "}\n", "{id: m", "meter 'm' is missing required key 'profile'"),
    (GEN + ', address: "000000000001"}\n', "address", "address: a modbus meter has no 'address'"),
    (GEN + "}\n  - {id: n, unit_id: 1, bus: b, profile: generic}\n", "1, bus: b",
     "unit_id: another meter on bus 'b' has 1"),
    (M1 + "profile: sdm120, relay_closed: false}\n", "false",
     "relay_closed: profile sdm120 has no relay to open"),
    (DLT + "123}\n", "123", 'write the address in quotes, like "000000000123"'),
    (DLT + '"1", unit_id: 3}\n', '"1"', "address: must be 12 decimal digits"),
    (GEN + ", load: {kind: daily, points: [[2000, 5]]}}\n", "{kind",
     "load: daily curve minutes must be distinct and in 0..1439"),
    (GEN + ", load: {kind: constant, wats: 5}}\n", "wats",
     "unknown key 'wats' in load; did you mean 'watts'?"),
    (GEN + ', tou_slots: [{start: "25:00", tariff: 1}]}\n', '"25:00',
     'start: must be a time "HH:MM"'),
    (GEN + AREA + "g, customers: [c]}\n", "g, cust", "gate: no meter 'g'"),
    (GEN + ", load: {kind: constant, watts: 5}" + AREA + "m, customers: [c]}\n", "m, cust",
     "gate: meter 'm' measures its area; remove its 'load'"),
    (GEN + AREA + "m, customers: [c], solar: {x: 500}}\n", "{x: 500}",
     "solar: 'x' is not one of this area's customers"),
    ("clock: {start: yesterday}\n" + GOOD_BUS, "yesterday",
     "start: must be 'now' or an ISO-8601 time"),
    ("clock: {start: 2024-01-01T00:00:00}\n" + GOOD_BUS, "2024", "start: needs a UTC offset"),
    (GOOD_BUS + "buses: []\n", "buses: []", "duplicate key 'buses' (first at line 1)"),
    ("buses: [\n", None, "YAML syntax error"),
]  # fmt: skip


def where(text: str, needle: str | None) -> tuple[int, int]:
    """1-based line and column of ``needle`` in ``text`` (None: one past the end)."""
    at = len(text) if needle is None else text.index(needle)
    assert needle is None or text.count(needle) == 1, needle
    return text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1


@pytest.mark.parametrize(("text", "needle", "message"), BAD_FILES)
def test_located_errors(text: str, needle: str | None, message: str) -> None:
    line, column = where(text, needle)
    with pytest.raises(ConfigError) as info:
        parse_sim_config(text, "sim.yaml")
    err = info.value
    assert (err.file, err.line, err.column) == ("sim.yaml", line, column), str(err)
    assert message in err.message
    assert str(err).startswith(f"sim.yaml:{line}:{column}: ")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_sim_config(tmp_path / "nope.yaml")


def test_example_config() -> None:
    config = load_sim_config(example_sim_config_path(), link_dir="/somewhere")
    assert [b.link for b in config.buses] == ["/somewhere/rs485-1", "/somewhere/rs485-2"]
    assert [(b.baud, b.parity) for b in config.buses] == [(2400, "E"), (9600, "N")]
    modbus = {m.id: m for m in config.meters if m.protocol == "modbus"}
    assert modbus["T2-gate"].turnaround_ms == 20  # the dtsu666 profile's
    assert modbus["T2-gate"].phases == 3
    assert {a.id for a in config.areas} == {"T1", "T2"}


# --- the service in-process ----------------------------------------------------------


@pytest.fixture
def example(tmp_path: Path) -> Iterator[tuple[Simulator, ManualClock]]:
    clock = ManualClock(NOON)
    config = load_sim_config(example_sim_config_path(), link_dir=str(tmp_path))
    sim = Simulator(
        config,
        clock,
        state_path=tmp_path / "state.json",
        control_path=tmp_path / "ctl.sock",
        state_interval=0.05,
    )
    with sim:
        yield sim, clock


def test_areas_have_a_known_loss(example: tuple[Simulator, ManualClock]) -> None:
    sim, clock = example
    clock.advance(3600)
    truth = sim.truth()
    t1 = truth["areas"]["T1"]
    assert t1["supply_wh"] > t1["sales_wh"] > 0
    assert t1["loss_wh"] == t1["supply_wh"] - t1["sales_wh"]
    # 3.5 % of the customers' power on top of it: a loss rate of 35/1035 of supply
    assert abs(t1["loss_ppm"] - 33_816) < 200
    meters = truth["meters"]
    gate_gain = meters["T1-gate"]["energy_import_wh"] - 48_120_000
    assert gate_gain == t1["supply_wh"]
    # rooftop solar behind D301 at noon: it feeds in, so it exports
    assert meters["D301-dorm"]["power_w"] < 0


def test_control_socket(example: tuple[Simulator, ManualClock], tmp_path: Path) -> None:
    sim, _ = example
    sock = tmp_path / "ctl.sock"
    assert request(sock, {"op": "ping"}) == {"ok": True, "pid": os.getpid()}
    one = request(sock, {"op": "truth", "meter": "C201-shop"})
    assert one["ok"] and set(one["meters"]) == {"C201-shop"}
    assert one["meters"]["C201-shop"]["registers"]["POWER"] == 800
    faults = request(sock, {"op": "fault", "meter": "C201-shop", "kind": "late", "delay_ms": 80})
    assert faults["faults"]["extra_delay"] == 0.08
    assert request(sock, {"op": "fault", "meter": "C201-shop", "kind": "silent", "seconds": 9})[
        "ok"
    ]
    assert sim.meter("C201-shop").faults.silent
    assert request(sock, {"op": "clear", "meter": "C201-shop"}) == {"ok": True}
    assert not sim.meter("C201-shop").faults.silent
    assert request(sock, {"op": "bus_silent", "bus": "rs485-1", "seconds": 30})["ok"]
    assert sim.bus("rs485-1").silent
    assert request(sock, {"op": "clear"})["ok"]
    assert not sim.bus("rs485-1").silent
    swap = {"meter_number": "000000999999", "energy_import_wh": 1000}
    answer = request(sock, {"op": "meter", "meter": "A101-store", "action": "swap", "args": swap})
    assert answer["result"]["meter_number"] == "000000999999"
    assert sim.truth("A101-store")["meters"]["A101-store"]["energy_import_wh"] == 1000
    assert request(sock, {"op": "log", "bus": "rs485-2"}) == {"ok": True, "entries": [], "next": 0}
    counters = request(sock, {"op": "counters"})["buses"]
    assert counters["rs485-2"]["transactions"] == 0
    for bad, error in [
        ({"op": "nope"}, "unknown op 'nope'"),
        ({"op": "truth", "meter": "X"}, "no meter 'X'"),
        ({"op": "fault", "meter": "C201-shop", "kind": "fire"}, "fault kind must be one of"),
        ({"op": "fault", "meter": "C201-shop", "kind": "late"}, "needs delay_ms"),
        ({"op": "log"}, "missing 'bus'"),
        ({"op": "meter", "meter": "C201-shop", "action": "dance"}, "no control action"),
        ([1, 2], "a request is a JSON object"),
    ]:
        answer = request(sock, bad)  # type: ignore[arg-type]
        assert answer["ok"] is False and error in answer["error"], answer


SHOP = "000000220101"  # A101-shop in the example: close_mode button, password 000000


def dlt645_over_the_pty(path: Path, event: dlt645.Event) -> dlt645.Event | None:
    """One DL/T 645 request on the example's rs485-1 and its decoded reply (None: silence)."""
    # pyserial cannot set even parity on a pty: open it 8N1 (design.md)
    with serial.Serial(str(path), 2400, timeout=1.0) as port:
        port.write(dlt645.encode(event, preamble=4))
        framer = dlt645.Framer()
        while True:
            data = port.read(1)
            if not data:
                return None
            events = framer.feed(data)
            if events:
                time.sleep(0.03)  # the master's silent gap (t3.5 is 16 ms at 2400 8E1)
                return events[0]


def test_control_socket_drift_and_button(
    example: tuple[Simulator, ManualClock], tmp_path: Path
) -> None:
    sim, clock = example
    sock, line = tmp_path / "ctl.sock", tmp_path / "rs485-1"

    def meter(meter_id: str, action: str, args: dict[str, object]) -> dict[str, object]:
        answer = request(sock, {"op": "meter", "meter": meter_id, "action": action, "args": args})
        assert answer["ok"], answer
        return answer["result"]  # type: ignore[no-any-return]

    def truth(meter_id: str) -> dict[str, object]:
        return request(sock, {"op": "truth", "meter": meter_id})["meters"][meter_id]  # type: ignore[no-any-return]

    # clock drift: 60 s fast now, gaining 1000 ppm from now on (the config said 20 ppm)
    assert truth("A101-store")["meter_time"] == "2024-06-01T12:00:00+08:00"
    drift = meter("A101-store", "drift", {"ppm": 1000, "offset_s": 60})
    assert drift == {"drift_ppm": 1000, "meter_time": "2024-06-01T12:01:00+08:00"}
    clock.advance(1000)
    store = truth("A101-store")
    assert store["drift_ppm"] == 1000
    assert store["meter_time"] == "2024-06-01T12:17:41+08:00"  # 12:00 + 60 s + 1000 s + 1 s
    # ... and the meter says so on the wire (DI 04000102: hh:mm:ss)
    reply = dlt645_over_the_pty(line, dlt645.ReadRequest("000000220102", 0x04000102))
    assert isinstance(reply, dlt645.ReadReply), reply
    assert dlt645.decode_value(0x04000102, reply.data) == dtime(12, 17, 41)
    assert truth("A101-shop")["meter_time"] == "2024-06-01T12:16:40+08:00"  # no drift

    # the button: closes the relay only after a close-allow (1C 1B) came over the line
    assert meter("A101-shop", "button", {}) == {"closed": False, "relay_closed": True}
    deadline = datetime(2024, 6, 1, 13, 0)  # meter-local, naive
    trip = dlt645.RelayControl(SHOP, dlt645.RelayAction.TRIP, deadline)
    assert isinstance(dlt645_over_the_pty(line, trip), dlt645.RelayReply)
    assert truth("A101-shop")["relay_closed"] is False
    assert meter("A101-shop", "button", {}) == {"closed": False, "relay_closed": False}
    allow = dlt645.RelayControl(SHOP, dlt645.RelayAction.CLOSE_ALLOW, deadline)
    assert isinstance(dlt645_over_the_pty(line, allow), dlt645.RelayReply)
    shop = truth("A101-shop")
    assert (shop["relay_closed"], shop["close_allowed"]) == (False, True)  # waits for the button
    assert meter("A101-shop", "button", {}) == {"closed": True, "relay_closed": True}
    shop = truth("A101-shop")
    assert (shop["relay_closed"], shop["close_allowed"]) == (True, False)
    assert meter("A101-shop", "button", {}) == {"closed": False, "relay_closed": True}  # used up
    results = [(e.direction, e.result) for e in sim.bus("rs485-1").entries()]
    assert results == [("request", "ok"), ("reply", "ok")] * 3


def test_control_socket_takes_many_lines_and_rejects_non_json(
    example: tuple[Simulator, ManualClock], tmp_path: Path
) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(tmp_path / "ctl.sock"))
        s.sendall(b'{"op": "ping"}\nnot json\n{"op": "counters"}\n')
        data = b""
        while data.count(b"\n") < 3:
            data += s.recv(65536)
    answers = [json.loads(line) for line in data.splitlines()]
    assert [a["ok"] for a in answers] == [True, False, True]
    assert "not JSON" in answers[1]["error"]


def test_state_file(example: tuple[Simulator, ManualClock], tmp_path: Path) -> None:
    sim, clock = example
    path = tmp_path / "state.json"
    first = json.loads(path.read_text())
    assert first["pid"] == os.getpid() and first["running"] is True
    assert first["buses"]["rs485-2"]["path"] == str(tmp_path / "rs485-2")
    assert first["buses"]["rs485-2"]["pty"].startswith("/dev/pts/")
    assert first["control"] == str(tmp_path / "ctl.sock")
    clock.advance(600)
    deadline = time.monotonic() + 3
    while json.loads(path.read_text())["clock"]["now"] == first["clock"]["now"]:
        assert time.monotonic() < deadline, "the state file was not rewritten"
        time.sleep(0.02)
    sim.stop()
    last = json.loads(path.read_text())
    assert last["running"] is False
    assert last["meters"]["C201-shop"]["energy_import_wh"] == 152_300 + 800 * 600 // 3600
    assert not (tmp_path / "rs485-1").exists() and not (tmp_path / "ctl.sock").exists()


# --- the command line ----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_starts_answers_and_stops_on_a_signal(tmp_path: Path, signum: int) -> None:
    state = tmp_path / "state.json"
    sock = tmp_path / "ctl.sock"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "gateway", "sim", "--link-dir", str(tmp_path)),
            *("--state", str(state), "--control", str(sock), "--live"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (state.exists() and sock.exists()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.05)
        assert request(sock, {"op": "ping"})["pid"] == proc.pid
        assert os.readlink(tmp_path / "rs485-2").startswith("/dev/pts/")
        assert json.loads(state.read_text())["pid"] == proc.pid
        time.sleep(1.2)  # one live line per bus
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err  # a clean stop, not KeyboardInterrupt's 130
    assert "rs485-2: " + str(tmp_path / "rs485-2") in out
    assert "tx/s" in out and "busy" in out
    assert out.rstrip().endswith("simulator stopped")
    assert not (tmp_path / "rs485-1").is_symlink() and not sock.exists()
    assert json.loads(state.read_text())["running"] is False


def test_cli_ctl_and_bad_config(
    example: tuple[Simulator, ManualClock], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["sim", "ctl", str(tmp_path / "ctl.sock"), '{"op": "ping"}']) == 0
    assert json.loads(capsys.readouterr().out)["pid"] == os.getpid()
    assert cli.main(["sim", "ctl", str(tmp_path / "ctl.sock"), '{"op": "x"}']) == 1
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("buses:\n  - {name: b, protocol: modbus, baud: 1000}\n")
    assert cli.main(["sim", "--config", str(bad), "--link-dir", str(tmp_path / "x")]) == 2
    assert f"gateway sim: {bad}:2:39: baud: must be one of" in capsys.readouterr().err
