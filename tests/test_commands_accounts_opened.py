"""Accounts opened or changed by ACCOUNT_CHANGE are tripped like configured ones: the relay
controller runs although no configured account trips on arrears, asks the charger which
accounts trip, trips a meter added by METER_CHANGE to an account already due, and counts
them in the storm guard's base; THRESHOLDS and PROTECT accept them.  Signed commands
through a real Mosquitto to a gateway polling simulated meters."""

from __future__ import annotations

import base64
import time
from contextlib import AbstractContextManager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from polling import START, wait_for
from test_commands import GW, YUAN, command, connected, send
from test_commands import master_key as master_key  # the fixture
from test_commands_meter import METERS, PRICE, polled, register, simulator

from gateway.clock import ManualClock
from gateway.commands.keys import public_key_bytes
from gateway.mosquitto import Mosquitto
from gateway.prepaid import PrepaidState
from gateway.protocols.command import ArgValue, CommandKind, CommandReply, ReasonCode, ReplyStatus
from gateway.protocols.quantities import EventCode
from gateway.runtime import Runtime
from gateway.sim.service import Simulator
from gateway.store.journal import JournalReader


def config_yaml(sim: Simulator, broker: Mosquitto, key: bytes) -> str:
    """dl1 on postpaid account A, dl2 on none: no configured account trips on arrears."""
    return f"""\
gateway_id: {GW}
serial_buses:
  - {{name: dl, port: '{sim.bus("dl").path}', protocol: dlt645, baud: 38400, parity: E}}
meters:
  - {{id: dl1, bus: dl, address: '{METERS[0].address}', account: A}}
  - {{id: dl2, bus: dl, address: '{METERS[1].address}'}}
accounts:
  - {{id: A, type: postpaid, tariff: flat}}
tariffs:
  - {{id: flat, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat, price: {PRICE}}}
relays: {{confirm_delay_s: 0.1, close_mode: direct, storm: {{min_accounts: 10}}}}
uplink: {{host: {broker.host}, port: {broker.port}, client_id: gateway-test-gw}}
commands: {{public_key: '{base64.b64encode(key).decode()}'}}
"""


def gateway(
    tmp: Path, sim: Simulator, broker: Mosquitto, key: bytes
) -> AbstractContextManager[Runtime]:
    return connected(config_yaml(sim, broker, key), tmp, broker, sim.clock)


def relay_closed(sim: Simulator, meter: str) -> bool:
    closed = sim.truth(meter)["meters"][meter]["relay_closed"]
    assert isinstance(closed, bool)
    return closed


def trips(rt: Runtime, meter: str) -> list[dict[int | str, int | str]]:
    """The details of the RELAY_TRIPPED events of ``meter`` on disk."""
    assert rt.writer is not None and rt.writer.flush(10)
    with JournalReader(rt.store_path) as reader:
        events = [e for _, e in reader.events(limit=100_000)]
    return [e.detail for e in events if e.code == EventCode.RELAY_TRIPPED and e.meter == meter]


def test_accounts_opened_or_changed_by_command_are_tripped(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    key = public_key_bytes(master_key)
    clock = ManualClock(START)

    def do(rt: Runtime, kind: CommandKind, args: dict[str, ArgValue]) -> CommandReply:
        return send(broker, command(rt, master_key, kind, args))

    with simulator(tmp_path, clock) as sim:
        with gateway(tmp_path, sim, broker, key) as rt:
            c, relays = rt.charger, rt.relays
            assert c is not None and relays is not None  # started: its meters have relays
            polled(rt, clock)  # the baselines
            polled(rt, clock, 600)  # dl1 charged to postpaid A: A below zero, not due
            assert c.balance("A") < 0 and c.state("A") != PrepaidState.DUE_TO_TRIP
            # B opened at balance 0: due at once, with no meter yet
            opened = do(rt, CommandKind.ACCOUNT_CHANGE, {
                "op": "open", "account": "B", "type": "prepaid", "tariff": "flat",
                "reason": "new tenant"})  # fmt: skip
            assert opened.status == ReplyStatus.OK, opened
            wait_for(lambda: c.state("B") == PrepaidState.DUE_TO_TRIP, 10, "B due")
            # dl2 added to B (due already: no state change): tripped after the reload
            added = do(rt, CommandKind.METER_CHANGE, {
                "op": "add", "meter": "dl2", "account": "B", "initial_wh": register(sim, "dl2"),
                "reason": "work order 8"})  # fmt: skip
            assert added.status == ReplyStatus.OK, added
            wait_for(lambda: not relay_closed(sim, "dl2"), 20, "dl2 tripped")
            wait_for(lambda: len(trips(rt, "dl2")) == 1, 10, "dl2's trip recorded")
            assert trips(rt, "dl2")[0]["account"] == "B"
            assert trips(rt, "dl2")[0]["reason"] == "meter-added"
            # a top-up closes it (direct close), like a configured account's
            funded = do(rt, CommandKind.TOP_UP, {"account": "B", "amount": 100 * YUAN,
                                                 "top_up_id": "B-1"})  # fmt: skip
            assert funded.status == ReplyStatus.OK, funded
            wait_for(lambda: relay_closed(sim, "dl2"), 20, "dl2 closed")
            # A changed to prepaid with trip on arrears: below zero, due, dl1 tripped
            assert relay_closed(sim, "dl1")
            changed = do(rt, CommandKind.ACCOUNT_CHANGE, {
                "op": "change", "account": "A", "type": "prepaid", "trip_on_arrears": True,
                "reason": "tenant switched to prepaid"})  # fmt: skip
            assert changed.status == ReplyStatus.OK, changed
            wait_for(lambda: not relay_closed(sim, "dl1"), 20, "dl1 tripped")
            wait_for(lambda: len(trips(rt, "dl1")) == 1, 10, "dl1's trip recorded")
            assert trips(rt, "dl1")[0]["reason"] == "arrears"
            assert relays.trip_accounts() == {"A", "B"}
            storm = relays.status()["storm"]
            assert isinstance(storm, dict) and storm["accounts"] == 2
            before = register(sim, "dl1")
            polled(rt, clock, 600)
            assert register(sim, "dl1") == before and relay_closed(sim, "dl2")
        # a restart: the accounts' records win over the configuration, the relays agree
        with gateway(tmp_path, sim, broker, key) as rt:
            relays = rt.relays
            assert relays is not None and relays.trip_accounts() == {"A", "B"}
            polled(rt, clock, 60)
            assert not relay_closed(sim, "dl1") and relay_closed(sim, "dl2")
            assert len(trips(rt, "dl1")) == 1  # remembered tripped: not tripped again


def test_thresholds_and_protect_take_accounts_opened_by_command(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    key = public_key_bytes(master_key)
    clock = ManualClock(START)
    levels: dict[str, ArgValue] = {
        "alarm1": 50 * YUAN, "alarm2": 10 * YUAN, "overdraft_limit": 5 * YUAN,
        "close_allow": 20 * YUAN, "emergency_credit": 0}  # fmt: skip

    def do(rt: Runtime, kind: CommandKind, args: dict[str, ArgValue]) -> CommandReply:
        return send(broker, command(rt, master_key, kind, args))

    with simulator(tmp_path, clock) as sim:
        with gateway(tmp_path, sim, broker, key) as rt:
            c, relays = rt.charger, rt.relays
            assert c is not None and relays is not None
            reply = do(rt, CommandKind.THRESHOLDS, {"account": "B", **levels})  # not open yet
            assert (reply.status, reply.reason) == (ReplyStatus.REFUSED, ReasonCode.BAD_ARGUMENTS)
            assert "'B'" in reply.text
            opened = do(rt, CommandKind.ACCOUNT_CHANGE, {
                "op": "open", "account": "B", "type": "prepaid", "tariff": "flat",
                "reason": "new tenant"})  # fmt: skip
            assert opened.status == ReplyStatus.OK, opened
            reply = do(rt, CommandKind.THRESHOLDS, {"account": "B", **levels})
            assert (reply.status, reply.reason) == (ReplyStatus.OK, ReasonCode.NONE), reply
            assert c.thresholds("B").close_allow == 20 * YUAN
            assert c.thresholds("A").close_allow == 0  # the default, untouched
            reply = do(rt, CommandKind.PROTECT, {"account": "B", "on": True})
            assert (reply.status, reply.reason) == (ReplyStatus.OK, ReasonCode.NONE), reply
            assert relays.protected("B")
        with gateway(tmp_path, sim, broker, key) as rt:  # a restart: both remembered
            assert rt.charger is not None and rt.relays is not None
            assert rt.charger.thresholds("B").close_allow == 20 * YUAN
            assert rt.relays.protected("B")
            reply = do(rt, CommandKind.PROTECT, {"account": "B", "on": False})
            assert reply.status == ReplyStatus.OK, reply
            assert not rt.relays.protected("B")
            closed = do(rt, CommandKind.ACCOUNT_CHANGE, {
                "op": "close", "account": "B", "reason": "lease ended"})  # fmt: skip
            assert closed.status == ReplyStatus.OK, closed
            reply = do(rt, CommandKind.PROTECT, {"account": "B", "on": True})  # closed now
            assert (reply.status, reply.reason) == (ReplyStatus.REFUSED, ReasonCode.BAD_ARGUMENTS)


def closes(rt: Runtime, meter: str) -> list[dict[int | str, int | str]]:
    """The details of the RELAY_CLOSED events of ``meter`` on disk."""
    assert rt.writer is not None and rt.writer.flush(10)
    with JournalReader(rt.store_path) as reader:
        events = [e for _, e in reader.events(limit=100_000)]
    return [e.detail for e in events if e.code == EventCode.RELAY_CLOSED and e.meter == meter]


def test_a_tripped_meter_moved_to_another_account_is_closed(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    key = public_key_bytes(master_key)
    clock = ManualClock(START)

    def do(rt: Runtime, kind: CommandKind, args: dict[str, ArgValue]) -> CommandReply:
        reply = send(broker, command(rt, master_key, kind, args))
        assert reply.status == ReplyStatus.OK, reply
        return reply

    with simulator(tmp_path, clock) as sim, gateway(tmp_path, sim, broker, key) as rt:
        polled(rt, clock)
        do(rt, CommandKind.ACCOUNT_CHANGE, {"op": "open", "account": "B", "type": "prepaid",
                                            "tariff": "flat", "reason": "tenant"})  # fmt: skip
        do(rt, CommandKind.METER_CHANGE, {"op": "add", "meter": "dl2", "account": "B",
           "initial_wh": register(sim, "dl2"), "reason": "work order 9"})  # fmt: skip
        wait_for(lambda: not relay_closed(sim, "dl2"), 20, "dl2 tripped (B due)")
        wait_for(lambda: len(trips(rt, "dl2")) == 1, 10, "dl2's trip recorded")
        # B's tenant leaves without paying; dl2 goes to C (postpaid): closed for C
        do(rt, CommandKind.METER_CHANGE, {"op": "remove", "meter": "dl2",
           "final_wh": register(sim, "dl2"), "reason": "tenant left"})  # fmt: skip
        time.sleep(0.5)  # removed, charged to no one: left as it is
        assert not relay_closed(sim, "dl2") and closes(rt, "dl2") == []
        do(rt, CommandKind.ACCOUNT_CHANGE, {"op": "open", "account": "C", "type": "postpaid",
                                            "tariff": "flat", "reason": "new tenant"})  # fmt: skip
        do(rt, CommandKind.METER_CHANGE, {"op": "add", "meter": "dl2", "account": "C",
           "initial_wh": register(sim, "dl2"), "reason": "work order 10"})  # fmt: skip
        wait_for(lambda: relay_closed(sim, "dl2"), 20, "dl2 closed for C")
        wait_for(lambda: len(closes(rt, "dl2")) == 1, 10, "dl2's close recorded")
        assert closes(rt, "dl2")[0]["reason"] == "meter-moved"
        assert closes(rt, "dl2")[0]["account"] == "C"
        before = register(sim, "dl2")
        polled(rt, clock, 600)  # C's tenant has power, charged to C
        assert register(sim, "dl2") > before and rt.charger is not None
        assert rt.charger.balance("C") < 0
