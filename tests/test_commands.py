"""Signed commands end to end: master (gateway.master.command) -> a real Mosquitto ->
the gateway's uplink -> CommandService -> ledger, and the reply back on ``up/reply``.

A signed top-up is applied once however often it is sent; forged, expired, replayed,
unsigned, wrong-gateway and malformed commands are refused with their reason and
change nothing; a command's id survives a restart; while the clock is untrusted only
a time-set is taken; a missing component is FAILED, not a crash."""

from __future__ import annotations

import base64
import dataclasses
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from polling import START, M, sim_yaml, wait_for

from gateway.clock import Clock, ManualClock
from gateway.commands.keys import public_key_bytes
from gateway.config import parse_config
from gateway.master.command import build_command, send_command
from gateway.mosquitto import Mosquitto
from gateway.poller import PollSettings
from gateway.prepaid import PrepaidState, Thresholds
from gateway.protocols.command import (
    ArgValue,
    Command,
    CommandKind,
    CommandReply,
    ReasonCode,
    ReplyStatus,
    new_command_id,
)
from gateway.relays import RelayController
from gateway.runtime import Runtime
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.store.ledger import LedgerReader
from gateway.uplink import UplinkSettings

GW = "test-gw"
METER = M("dl1", "dl", "dlt645", 1, energy_wh=10_000, watts=0, turnaround_ms=5)
YUAN = 10_000


def config_yaml(sim: Simulator, broker: Mosquitto, public_key: bytes | None) -> str:
    """One DL/T 645 meter of prepaid account A; relays confirmed fast."""
    key = f"'{base64.b64encode(public_key).decode()}'" if public_key else "null"
    return f"""\
gateway_id: {GW}
serial_buses:
  - {{name: dl, port: '{sim.bus("dl").path}', protocol: dlt645, baud: 38400, parity: E}}
meters:
  - {{id: dl1, bus: dl, address: '{METER.address}', account: A}}
accounts:
  - {{id: A, type: prepaid, tariff: flat}}
tariffs:
  - {{id: flat, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat, price: 8500}}
uplink: {{host: {broker.host}, port: {broker.port}, client_id: gateway-test-gw}}
commands: {{public_key: {key}}}
relays: {{confirm_delay_s: 0.1, confirm_attempts: 3, close_mode: direct}}
"""


@contextmanager
def simulator(tmp: Path, clock: ManualClock) -> Iterator[Simulator]:
    text = sim_yaml([("dl", "dlt645", 38400)], [METER])
    config = parse_sim_config(text, "s.yaml", link_dir=str(tmp))
    with Simulator(config, clock) as sim:
        yield sim


@contextmanager
def gateway(
    tmp: Path,
    broker: Mosquitto,
    public_key: bytes | None,
    clock: ManualClock,
    *,
    calendar: bool = False,
    charging: bool = True,
    sims: list[Simulator] | None = None,
) -> Iterator[Runtime]:
    """A gateway runtime on a simulated meter, its uplink connected; ``sims`` gets the
    simulator."""
    with simulator(tmp, clock) as sim:
        if sims is not None:
            sims.append(sim)
        text = config_yaml(sim, broker, public_key)
        with connected(text, tmp, broker, clock, charging=charging, calendar=calendar) as rt:
            yield rt


@contextmanager
def connected(
    text: str,
    tmp: Path,
    broker: Mosquitto,
    clock: Clock,
    *,
    charging: bool = True,
    calendar: bool = False,
) -> Iterator[Runtime]:
    """A gateway runtime on the configuration ``text`` (store ``tmp``/gw.db), its uplink
    connected and answering on down/cmd."""
    rt = Runtime(
        parse_config(text, str(tmp / "gw.yaml")),
        store_path=tmp / "gw.db",
        clock=clock,
        settings=PollSettings(interval=0, max_power_w=10**9),
        status_socket=None,
        reopen_max=0.2,
        uplink=UplinkSettings(),
        charging=charging,
        calendar=calendar,
    )
    with rt:
        wait_for(lambda: rt.uplink is not None and rt.uplink.connected, 10, "uplink")
        subscribed(broker)
        yield rt


def subscribed(broker: Mosquitto) -> None:
    """Wait until the gateway answers on down/cmd: an unsigned probe (refused, kept nowhere)."""
    for _ in range(20):
        probe = Command(new_command_id(), GW, 0, 1, CommandKind.BACK_FILL)
        reply = send_command(broker.host, broker.port, "gw", probe, timeout=1)
        if reply is not None:
            assert reply.reason == ReasonCode.UNSIGNED
            return
    raise AssertionError("the gateway never answered on down/cmd")


@pytest.fixture
def master_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def command(
    rt: Runtime,
    key: Ed25519PrivateKey,
    kind: CommandKind,
    args: dict[str, ArgValue],
    *,
    gateway_id: str = GW,
    issued_ms: int | None = None,
    expires_in_s: int = 300,
) -> Command:
    now = rt.now_ms() if issued_ms is None else issued_ms
    return build_command(gateway_id, kind, args, key, expires_in_s=expires_in_s, now_ms=now)


def send(broker: Mosquitto, cmd: Command) -> CommandReply:
    reply = send_command(broker.host, broker.port, "gw", cmd, timeout=20, to=GW)
    assert reply is not None, "no reply from the gateway"
    assert reply.command_id == cmd.command_id
    return reply


def top_up(amount: int, top_up_id: str) -> dict[str, ArgValue]:
    return {"account": "A", "amount": amount, "top_up_id": top_up_id}


def state(rt: Runtime) -> tuple[int | None, int, int]:
    """The account's balance, its ledger entries and the command ids kept (on disk)."""
    rt.writer.flush(10) if rt.writer else None
    with LedgerReader(rt.store_path) as reader:
        balance = reader.balance("A")
        entries = len(reader.entries())
    with sqlite3.connect(rt.store_path) as conn:
        kept = conn.execute("SELECT count(*) FROM commands").fetchone()[0]
    return balance, entries, kept


def test_a_signed_top_up_is_applied_once(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    with gateway(tmp_path, broker, public_key_bytes(master_key), ManualClock(START)) as rt:
        balance0, entries0, _ = state(rt)
        cmd = command(rt, master_key, CommandKind.TOP_UP, top_up(100 * YUAN, "T-1"))
        first = send(broker, cmd)
        assert (first.status, first.reason) == (ReplyStatus.OK, ReasonCode.NONE)
        assert first.result["balance"] == (balance0 or 0) + 100 * YUAN
        assert first.result["duplicate"] is False
        assert state(rt) == ((balance0 or 0) + 100 * YUAN, entries0 + 1, 1)

        again = send(broker, cmd)  # the very same command: a replay
        assert (again.status, again.reason) == (ReplyStatus.REFUSED, ReasonCode.REPLAYED)
        original = again.result["original"]
        assert isinstance(original, dict)
        assert original["status"] == ReplyStatus.OK
        assert original["result"] == first.result
        assert state(rt) == ((balance0 or 0) + 100 * YUAN, entries0 + 1, 1)

        # A new command carrying the same top-up id: the ledger applies a top-up id once.
        other = send(broker, command(rt, master_key, CommandKind.TOP_UP, top_up(100 * YUAN, "T-1")))
        assert other.status == ReplyStatus.OK
        assert other.result["duplicate"] is True
        assert other.result["entry_id"] == first.result["entry_id"]
        assert state(rt) == ((balance0 or 0) + 100 * YUAN, entries0 + 1, 2)


def test_forged_expired_unsigned_and_misdirected_commands_change_nothing(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    clock = ManualClock(START)
    with gateway(tmp_path, broker, public_key_bytes(master_key), clock) as rt:
        before = state(rt)
        args = top_up(50 * YUAN, "T-2")
        signed = command(rt, master_key, CommandKind.TOP_UP, args)
        forger = Ed25519PrivateKey.generate()
        cases: list[tuple[Command, ReasonCode, str]] = [
            (command(rt, forger, CommandKind.TOP_UP, args), ReasonCode.BAD_SIGNATURE, "signature"),
            (
                command(rt, master_key, CommandKind.TOP_UP, args, issued_ms=rt.now_ms() - 600_000),
                ReasonCode.EXPIRED,
                "expired",
            ),
            (
                dataclasses.replace(signed, signature=None),
                ReasonCode.UNSIGNED,
                "not signed",
            ),
            (
                command(rt, master_key, CommandKind.TOP_UP, args, gateway_id="other-gw"),
                ReasonCode.WRONG_GATEWAY,
                "other-gw",
            ),
            (
                command(rt, master_key, CommandKind.TOP_UP, args, expires_in_s=3 * 86_400),
                ReasonCode.POLICY,
                "valid for",
            ),
        ]
        # A signature over other arguments: the amount changed after signing.
        tampered = dataclasses.replace(signed, args={**args, "amount": 5000 * YUAN})
        cases.append((tampered, ReasonCode.BAD_SIGNATURE, "signature"))
        for cmd, reason, words in cases:
            reply = send(broker, cmd)
            assert (reply.status, reply.reason) == (ReplyStatus.REFUSED, reason), reply
            assert words in reply.text
            assert state(rt) == before, reason
        assert rt.commands is not None
        garbage = rt.commands.submit(b"\xa1\x00\x01 not a command").result(20)
        assert (garbage.status, garbage.reason) == (ReplyStatus.REFUSED, ReasonCode.MALFORMED)
        assert garbage.command_id == b""
        assert state(rt) == before

        # The untampered command is still good: refusals spent nothing.
        assert send(broker, signed).status == ReplyStatus.OK
        assert state(rt)[0] == (before[0] or 0) + 50 * YUAN
        # Later than its expiry by the gateway's clock, a replay is refused as expired.
        clock.advance(301)
        late = send(broker, signed)
        assert (late.status, late.reason) == (ReplyStatus.REFUSED, ReasonCode.EXPIRED)


def test_no_key_configured_refuses_everything(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    with gateway(tmp_path, broker, None, ManualClock(START)) as rt:
        before = state(rt)
        reply = send(broker, command(rt, master_key, CommandKind.TOP_UP, top_up(YUAN, "T-3")))
        assert (reply.status, reply.reason) == (ReplyStatus.REFUSED, ReasonCode.UNSIGNED)
        assert "no public key" in reply.text
        assert state(rt) == before


def test_a_command_id_outlives_a_restart(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    clock = ManualClock(START)
    with gateway(tmp_path, broker, public_key_bytes(master_key), clock) as rt:
        cmd = command(rt, master_key, CommandKind.TOP_UP, top_up(7 * YUAN, "T-4"))
        assert send(broker, cmd).status == ReplyStatus.OK
        after = state(rt)
    with gateway(tmp_path, broker, public_key_bytes(master_key), clock) as rt:
        reply = send(broker, cmd)
        assert (reply.status, reply.reason) == (ReplyStatus.REFUSED, ReasonCode.REPLAYED)
        assert state(rt) == after


def test_untrusted_clock_takes_only_a_time_set(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    clock = ManualClock(START, trusted=False)
    with gateway(tmp_path, broker, public_key_bytes(master_key), clock) as rt:
        master_now = rt.now_ms() + 3_600_000  # the gateway's clock is an hour behind
        before = state(rt)
        cmd = command(rt, master_key, CommandKind.TOP_UP, top_up(YUAN, "T-5"), issued_ms=master_now)
        reply = send(broker, cmd)
        assert (reply.status, reply.reason) == (ReplyStatus.REFUSED, ReasonCode.TIME_UNTRUSTED)
        assert state(rt) == before

        stale = command(rt, master_key, CommandKind.TIME_SET, {}, issued_ms=master_now - 60_000)
        time_set = command(rt, master_key, CommandKind.TIME_SET, {}, issued_ms=master_now)
        reply = send(broker, time_set)
        assert reply.status == ReplyStatus.OK, reply
        assert reply.result["set"] is True
        assert abs(reply.result["offset_ms"] - 3_600_000) < 5_000  # type: ignore[operator]
        assert clock.trusted and clock.trust_source == "master"
        assert abs(rt.now_ms() - master_now) < 5_000

        assert send(broker, cmd).status == ReplyStatus.OK  # now judged by a trusted clock
        # An older time-set replayed while the clock is untrusted again cannot wind it back.
        clock.distrust()
        reply = send(broker, stale)
        assert (reply.status, reply.reason) == (ReplyStatus.REFUSED, ReasonCode.EXPIRED)
        assert abs(rt.now_ms() - master_now) < 5_000


def test_missing_components_and_unsupported_kinds_fail_plainly(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    with gateway(tmp_path, broker, public_key_bytes(master_key), ManualClock(START)) as rt:
        rt.relays = None  # type: ignore[attr-defined]  # relay control not running
        before = state(rt)
        protect = command(rt, master_key, CommandKind.PROTECT, {"account": "A", "on": True})
        reply = send(broker, protect)
        assert (reply.status, reply.reason) == (ReplyStatus.FAILED, ReasonCode.UNAVAILABLE)
        assert "relay control is not running" in reply.text
        tariff = send(broker, command(rt, master_key, CommandKind.CONFIG, {}))
        assert (tariff.status, tariff.reason) == (ReplyStatus.FAILED, ReasonCode.UNAVAILABLE)
        assert "not supported by this gateway yet" in tariff.text
        bad = send(broker, command(rt, master_key, CommandKind.TOP_UP, {"account": "A"}))
        assert (bad.status, bad.reason) == (ReplyStatus.REFUSED, ReasonCode.BAD_ARGUMENTS)
        assert "amount" in bad.text
        no_id = {"account": "A", "amount": YUAN}  # a re-sent payment must not pay twice
        bad = send(broker, command(rt, master_key, CommandKind.TOP_UP, no_id))
        assert (bad.status, bad.reason) == (ReplyStatus.REFUSED, ReasonCode.BAD_ARGUMENTS)
        assert "top_up_id" in bad.text
        unknown = send(broker, command(rt, master_key, 99, {}))  # type: ignore[arg-type]
        assert (unknown.status, unknown.reason) == (ReplyStatus.REFUSED, ReasonCode.UNKNOWN_KIND)
        backfill = send(broker, command(rt, master_key, CommandKind.BACK_FILL, {}))
        assert (backfill.status, backfill.reason) == (ReplyStatus.FAILED, ReasonCode.UNAVAILABLE)
        assert "collection tasks are not running" in backfill.text
        balance, entries, kept = state(rt)
        assert (balance, entries) == before[:2]
        assert kept == before[2] + 6  # each id is spent: a repeat cannot try again
        assert rt.commands is not None and rt.commands.alive()
        assert send(broker, protect).reason == ReasonCode.REPLAYED


def test_back_fill_reaches_the_collection_tasks(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    clock = ManualClock(START)
    with gateway(tmp_path, broker, public_key_bytes(master_key), clock, calendar=True) as rt:
        assert rt.calendar is not None
        asked: list[bool] = []
        rt.calendar.tasks.request_backfill = lambda: asked.append(True)  # type: ignore[method-assign]
        reply = send(broker, command(rt, master_key, CommandKind.BACK_FILL, {}))
        assert reply.status == ReplyStatus.OK, reply
        assert asked == [True]


def test_without_charging_a_top_up_goes_to_the_ledger_with_its_record(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    clock = ManualClock(START)
    with gateway(tmp_path, broker, public_key_bytes(master_key), clock):
        pass  # charging on once: the accounts are in the store
    with gateway(tmp_path, broker, public_key_bytes(master_key), clock, charging=False) as rt:
        assert rt.charger is None
        before = state(rt)
        cmd = command(rt, master_key, CommandKind.TOP_UP, top_up(3 * YUAN, "T-6"))
        reply = send(broker, cmd)
        assert reply.status == ReplyStatus.OK, reply
        assert reply.result["balance"] == (before[0] or 0) + 3 * YUAN
        assert state(rt) == ((before[0] or 0) + 3 * YUAN, before[1] + 1, before[2] + 1)
        over = send(broker, command(rt, master_key, CommandKind.TOP_UP, top_up(-YUAN, "T-7")))
        assert (over.status, over.reason) == (ReplyStatus.REFUSED, ReasonCode.POLICY)
        assert "positive" in over.text
        assert state(rt) == ((before[0] or 0) + 3 * YUAN, before[1] + 1, before[2] + 2)
        assert send(broker, cmd).reason == ReasonCode.REPLAYED


def counters(sim: Simulator) -> dict[str, int]:
    found = sim.truth("dl1")["meters"]["dl1"]["counters"]
    assert isinstance(found, dict)
    return found


def test_protect_and_relay_test_through_the_relay_controller(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    sims: list[Simulator] = []
    key = public_key_bytes(master_key)
    with gateway(tmp_path, broker, key, ManualClock(START), sims=sims) as rt:
        charger = rt.charger
        assert charger is not None and rt.writer is not None
        relays = getattr(rt, "relays", None)
        own = relays is None  # the runtime does not start one (yet): one on its parts
        if relays is None:
            relays = RelayController(
                rt.config, rt.bus_for, rt.writer, rt.clock, rt.charger, rt.writer
            )
            rt.charger.add_listener(relays.on_state)
            relays.start()
            rt.relays = relays  # type: ignore[attr-defined]
        try:
            # In credit, the relay closed and confirmed: a relay test may run.
            top = command(rt, master_key, CommandKind.TOP_UP, top_up(100 * YUAN, "R"))
            assert send(broker, top).status == ReplyStatus.OK
            wait_for(lambda: charger.state("A") == PrepaidState.NORMAL, 20, "account A normal")
            on = command(rt, master_key, CommandKind.PROTECT, {"account": "A", "on": True})
            assert send(broker, on).status == ReplyStatus.OK
            assert relays.protected("A")
            test = command(rt, master_key, CommandKind.RELAY_TEST, {"meter": "dl1"})
            reply = send(broker, test)
            assert (reply.status, reply.reason) == (ReplyStatus.FAILED, ReasonCode.DEVICE)
            assert "protect mode" in reply.text
            off = command(rt, master_key, CommandKind.PROTECT, {"account": "A", "on": False})
            assert send(broker, off).status == ReplyStatus.OK
            assert not relays.protected("A")
            trips = counters(sims[0])["control-trip"]
            reply = send(broker, command(rt, master_key, CommandKind.RELAY_TEST, {"meter": "dl1"}))
            assert reply.status == ReplyStatus.OK, reply
            result = reply.result["test"]
            assert isinstance(result, dict) and result["tripped"] and result["closed"]
            meter = sims[0].truth("dl1")["meters"]["dl1"]
            assert isinstance(meter, dict)
            assert meter["relay_closed"] is True
            assert counters(sims[0])["control-trip"] == trips + 1
        finally:
            if own:
                relays.stop()


def test_thresholds_reach_the_charger(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    with gateway(tmp_path, broker, public_key_bytes(master_key), ManualClock(START)) as rt:
        charger = rt.charger
        assert charger is not None
        levels = {
            "account": "A",
            "alarm1": 300 * YUAN,
            "alarm2": 100 * YUAN,
            "overdraft_limit": 5 * YUAN,
            "close_allow": 10 * YUAN,
            "emergency_credit": 20 * YUAN,
        }
        before = charger.thresholds("A")
        wrong = send(
            broker,
            command(rt, master_key, CommandKind.THRESHOLDS, {**levels, "alarm2": 400 * YUAN}),
        )
        assert (wrong.status, wrong.reason) == (ReplyStatus.REFUSED, ReasonCode.BAD_ARGUMENTS)
        assert "alarm 2" in wrong.text
        assert charger.thresholds("A") == before
        reply = send(broker, command(rt, master_key, CommandKind.THRESHOLDS, levels))
        assert reply.status == ReplyStatus.OK, reply
        assert charger.thresholds("A") == Thresholds(
            **{k: v for k, v in levels.items() if k != "account"}  # type: ignore[arg-type]
        )


def test_a_command_sent_while_the_gateway_is_away_is_applied_when_it_is_back(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    clock = ManualClock(START)
    key = public_key_bytes(master_key)
    with gateway(tmp_path, broker, key, clock) as rt:
        before = state(rt)  # the gateway's session (and its down/cmd subscription) exists
        cmd = command(rt, master_key, CommandKind.TOP_UP, top_up(9 * YUAN, "T-8"))
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(send_command, broker.host, broker.port, "gw", cmd, timeout=60)
        time.sleep(1.0)  # the command waits at the broker, in the gateway's session
        with gateway(tmp_path, broker, key, clock) as rt:
            reply = waiting.result(60)
            assert reply is not None and reply.status == ReplyStatus.OK, reply
            assert state(rt) == ((before[0] or 0) + 9 * YUAN, before[1] + 1, before[2] + 1)


def test_relay_resume_lifts_a_trip_storm_stop(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    with gateway(tmp_path, broker, public_key_bytes(master_key), ManualClock(START)) as rt:
        relays = rt.relays
        assert relays is not None
        relays.storm.stopped_ms = rt.now_ms()  # as the guard leaves it after a mass trip
        assert relays.status()["storm"]["stopped"] is True  # type: ignore[index]
        reply = send(broker, command(rt, master_key, CommandKind.RELAY_RESUME, {}))
        assert reply.status == ReplyStatus.OK, reply
        assert reply.result == {"was_stopped": True}
        assert relays.status()["storm"]["stopped"] is False  # type: ignore[index]
        again = send(broker, command(rt, master_key, CommandKind.RELAY_RESUME, {}))
        assert (again.status, again.result) == (ReplyStatus.OK, {"was_stopped": False})
        assert again.text == "tripping was not stopped"
