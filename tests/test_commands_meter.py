"""METER_CHANGE and ACCOUNT_CHANGE end to end: signed commands through a real Mosquitto
to a gateway polling simulated meters (gateway.commands.changes).

An account opened by command, topped up, given a meter, the meter removed with a refund
(the ledger changes once, however often the removal is sent), the account closed; an
account's type and tariff changed by command survive a restart over the
configuration; refusals say why and change nothing; a meter swapped without a work
order is held until a confirm command, then its CT ratio changed by command."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from polling import START, M, sim_yaml, wait_for
from test_commands import GW, YUAN, command, connected, send
from test_commands import master_key as master_key  # the fixture

from gateway.clock import ManualClock
from gateway.commands.keys import public_key_bytes
from gateway.mosquitto import Mosquitto
from gateway.protocols.command import ArgValue, CommandKind, ReasonCode, ReplyStatus
from gateway.runtime import Runtime
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.store.ledger import LedgerReader

PRICE = 8500  # flat: 0.85 yuan/kWh
METERS = [
    M("dl1", "dl", "dlt645", 1, energy_wh=10_000, watts=1_800, turnaround_ms=5),
    M("dl2", "dl", "dlt645", 2, energy_wh=50_000, watts=3_600, turnaround_ms=5),
]


def config_yaml(sim: Simulator, broker: Mosquitto, key: bytes) -> str:
    """dl1 on postpaid account A; dl2 on no account (and no vacancy tariff: not billed)."""
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
  - {{id: dear, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat, price: 20000}}
uplink: {{host: {broker.host}, port: {broker.port}, client_id: gateway-test-gw}}
commands: {{public_key: '{base64.b64encode(key).decode()}'}}
"""


@contextmanager
def simulator(tmp: Path, clock: ManualClock) -> Iterator[Simulator]:
    config = parse_sim_config(sim_yaml([("dl", "dlt645", 38400)], METERS), "s.yaml",
                              link_dir=str(tmp))  # fmt: skip
    with Simulator(config, clock) as sim:
        yield sim


def gateway(
    tmp: Path, sim: Simulator, broker: Mosquitto, key: bytes
) -> AbstractContextManager[Runtime]:
    return connected(config_yaml(sim, broker, key), tmp, broker, sim.clock)


def register(sim: Simulator, meter: str) -> int:
    """The meter's register as the gateway reads it (DL/T 645: whole 10 Wh)."""
    return int(sim.truth(meter)["meters"][meter]["energy_import_wh"]) // 10 * 10


def polled(rt: Runtime, clock: ManualClock, seconds: int = 0) -> None:
    """Advance the clock and wait until every meter was read after it, then written."""
    clock.advance(timedelta(seconds=seconds))
    now = int(clock.now().timestamp() * 1000)
    poller = rt.pollers["dl"]
    wait_for(lambda: all((s.energy_ts_ms or -1) >= now for s in poller.meters.values()), 10, "poll")
    assert rt.charger is not None and rt.charger.wait_idle(10)


def ledger(rt: Runtime, account: str = "B") -> tuple[int | None, int]:
    """(balance, number of ledger entries) of ``account`` on disk."""
    assert rt.writer is not None and rt.writer.flush(10)
    with LedgerReader(rt.store_path) as reader:
        entries = [e for e in reader.entries(limit=100_000) if e.account == account]
        return reader.balance(account), len(entries)


def test_meter_and_account_changes_by_signed_commands(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    key = public_key_bytes(master_key)
    clock = ManualClock(START)

    def do(rt: Runtime, kind: CommandKind, args: dict[str, ArgValue]):  # type: ignore[no-untyped-def]
        return send(broker, command(rt, master_key, kind, args))

    with simulator(tmp_path, clock) as sim:
        with gateway(tmp_path, sim, broker, key) as rt:
            c = rt.charger
            assert c is not None
            polled(rt, clock)
            assert c.account_of("dl2") is None  # no tenant, no vacancy tariff: not billed
            # -- an account opened, topped up, given dl2 -------------------------------------
            opened = do(rt, CommandKind.ACCOUNT_CHANGE, {
                "op": "open", "account": "B", "type": "prepaid", "tariff": "flat",
                "reason": "new tenant, shop 12"})  # fmt: skip
            assert (opened.status, opened.reason) == (ReplyStatus.OK, ReasonCode.NONE), opened
            assert opened.result["trip_on_arrears"] is True and opened.result["balance"] == 0
            assert c.trips_on_arrears("B") and not c.trips_on_arrears("A")
            funded = do(rt, CommandKind.TOP_UP, {"account": "B", "amount": 100 * YUAN,
                                                 "top_up_id": "B-1"})  # fmt: skip
            assert funded.status == ReplyStatus.OK
            start = register(sim, "dl2")
            added = do(rt, CommandKind.METER_CHANGE, {
                "op": "add", "meter": "dl2", "account": "B", "initial_wh": start,
                "reason": "work order 7"})  # fmt: skip
            assert added.status == ReplyStatus.OK, added
            assert c.meters_of("B") == ("dl2",) and c.account_of("dl2") == "B"
            polled(rt, clock, 1_000)  # dl2 draws 3600 W: 1000 Wh
            used = register(sim, "dl2") - start
            assert used >= 990
            cost = (2 * used * PRICE + 1000) // 2000
            assert c.balance("B") == 100 * YUAN - cost
            # -- dl2 removed with a refund, sent twice, then again under a new id ------------
            before, entries0 = ledger(rt)
            assert before == 100 * YUAN - cost
            final = register(sim, "dl2")
            removal = command(rt, master_key, CommandKind.METER_CHANGE, {
                "op": "remove", "meter": "dl2", "final_wh": final, "refund": True,
                "reason": "tenant left"})  # fmt: skip
            first = send(broker, removal)
            assert first.status == ReplyStatus.OK, first
            assert first.result["refunded"] == 100 * YUAN - cost and first.result["balance"] == 0
            after, entries1 = ledger(rt)
            assert after == 0 and entries1 == entries0 + 1  # the refund (nothing to charge)
            again = send(broker, removal)
            assert (again.status, again.reason) == (ReplyStatus.REFUSED, ReasonCode.REPLAYED)
            other = do(rt, CommandKind.METER_CHANGE, {
                "op": "remove", "meter": "dl2", "final_wh": final, "refund": True,
                "reason": "tenant left"})  # fmt: skip
            assert (other.status, other.reason) == (ReplyStatus.REFUSED, ReasonCode.POLICY)
            assert "removed" in other.text
            assert ledger(rt) == (after, entries1)
            # carried out but its record lost (the gateway stopped in between): sent again,
            # it is found done by its lifecycle reference, and nothing changes
            with sqlite3.connect(rt.store_path, timeout=10) as conn:
                conn.execute("DELETE FROM commands WHERE id = ?", (removal.command_id,))
            lost = send(broker, removal)
            assert lost.status == ReplyStatus.OK and "already done" in lost.text, lost
            assert ledger(rt) == (after, entries1)
            polled(rt, clock, 600)  # dl2 goes on drawing: journaled, charged to no one
            assert ledger(rt) == (after, entries1) and c.account_of("dl2") is None
            # -- closing: refused while a meter is on the account, else refunded to 0 -------
            busy = do(rt, CommandKind.ACCOUNT_CHANGE, {"op": "close", "account": "A",
                                                       "reason": "moving out"})  # fmt: skip
            assert (busy.status, busy.reason) == (ReplyStatus.REFUSED, ReasonCode.POLICY)
            assert "dl1" in busy.text
            do(rt, CommandKind.TOP_UP, {"account": "B", "amount": 5 * YUAN, "top_up_id": "B-2"})
            closed = do(rt, CommandKind.ACCOUNT_CHANGE, {"op": "close", "account": "B",
                                                         "reason": "lease ended"})  # fmt: skip
            assert closed.status == ReplyStatus.OK, closed
            assert (closed.result["refunded"], closed.result["balance"]) == (5 * YUAN, 0)
            assert closed.result["status"] == "closed"
            # -- A changed: unbilled, another tariff ----------------------------------------
            changed = do(rt, CommandKind.ACCOUNT_CHANGE, {
                "op": "change", "account": "A", "type": "unbilled", "tariff": "dear",
                "reason": "the mall's own use"})  # fmt: skip
            assert changed.status == ReplyStatus.OK, changed
            assert (c.billing["dl1"].tariff, c.billing["dl1"].unbilled) == ("dear", True)
            # -- refusals: plain, nothing changed -------------------------------------------
            polled(rt, clock)
            money = ledger(rt, "A"), ledger(rt, "B")
            for args, reason, words in [
                ({"op": "explode", "meter": "dl1", "reason": "x"}, ReasonCode.BAD_ARGUMENTS,
                 "op"),
                ({"op": "remove", "meter": "dl1", "reason": "x"}, ReasonCode.BAD_ARGUMENTS,
                 "final_wh"),
                ({"op": "remove", "meter": "nope", "final_wh": 1, "reason": "x"},
                 ReasonCode.BAD_ARGUMENTS, "nope"),
                ({"op": "confirm", "meter": "dl1", "approved_by": "tech", "reason": "x"},
                 ReasonCode.POLICY, "not held"),
            ]:  # fmt: skip
                reply = do(rt, CommandKind.METER_CHANGE, args)
                assert (reply.status, reply.reason) == (ReplyStatus.REFUSED, reason), reply
                assert words in reply.text
            reopen = do(rt, CommandKind.ACCOUNT_CHANGE, {"op": "open", "account": "A",
                        "type": "prepaid", "tariff": "flat", "reason": "x"})  # fmt: skip
            assert (reopen.status, reopen.reason) == (ReplyStatus.REFUSED, ReasonCode.POLICY)
            assert "open already" in reopen.text
            assert (ledger(rt, "A"), ledger(rt, "B")) == money  # (dl1 unbilled now)
        # -- a restart: the store's records win over the configuration ----------------------
        with gateway(tmp_path, sim, broker, key) as rt:
            c = rt.charger
            assert c is not None
            assert (c.billing["dl1"].tariff, c.billing["dl1"].unbilled) == ("dear", True)
            assert c.meters_of("B") == () and c.account_of("dl2") is None
            with sqlite3.connect(rt.store_path) as conn:
                types = dict(conn.execute("SELECT id, type FROM accounts").fetchall())
            assert types["A"] == "unbilled" and types["B"] == "prepaid"
            polled(rt, clock, 600)
            # A unbilled now; B closed; dl2 nobody's
            assert (ledger(rt, "A"), ledger(rt, "B")) == money


def test_a_swapped_meter_is_confirmed_and_its_ct_changed_by_command(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    key = public_key_bytes(master_key)
    clock = ManualClock(START)
    with simulator(tmp_path, clock) as sim, gateway(tmp_path, sim, broker, key) as rt:
        c, poller = rt.charger, rt.pollers["dl"]
        assert c is not None
        polled(rt, clock, 60)
        sim.control("dl1", "swap", {"meter_number": "990000000009", "energy_import_wh": 2_000})
        wait_for(lambda: "dl1" not in c.billing, 10, "dl1 held")
        assert poller.status()["swapped"] == ["dl1"]
        polled(rt, clock, 400)  # held: 200 Wh journaled, not charged
        assert c.balance("A") == ledger(rt, "A")[0]
        held = c.balance("A")
        reply = send(broker, command(rt, master_key, CommandKind.METER_CHANGE, {
            "op": "confirm", "meter": "dl1", "approved_by": "tech-7",
            "reason": "work order came late"}))  # fmt: skip
        assert reply.status == ReplyStatus.OK, reply
        assert reply.result["status"] == "active"
        assert "dl1" in c.billing and poller.status()["swapped"] == []
        polled(rt, clock, 100)
        # charged from the new meter's first reading: its register - 2000 Wh
        assert c.balance("A") == held - (2 * (register(sim, "dl1") - 2_000) * PRICE + 1000) // 2000
        # a CT fitted: ratio 10 from now on
        reg = register(sim, "dl1")
        ct = send(broker, command(rt, master_key, CommandKind.METER_CHANGE, {
            "op": "ct", "meter": "dl1", "final_wh": reg, "initial_wh": reg * 10,
            "new_ratio": 10, "reason": "CT 50/5 fitted"}))  # fmt: skip
        assert ct.status == ReplyStatus.OK, ct
        assert c.billing["dl1"].ratio == 10
        # dl2 (no tenant, not billed) swapped: nothing held, the confirm clears the flag
        sim.control("dl2", "swap", {"meter_number": "990000000010", "energy_import_wh": 0})
        wait_for(lambda: "dl2" in poller.status()["swapped"], 10, "dl2 swapped")  # type: ignore[operator]
        assert "dl2" not in c.billing
        confirm: dict[str, ArgValue] = {
            "op": "confirm", "meter": "dl2", "approved_by": "tech-7", "reason": "new meter"
        }  # fmt: skip
        reply = send(broker, command(rt, master_key, CommandKind.METER_CHANGE, confirm))
        assert reply.status == ReplyStatus.OK, reply
        assert reply.result["held"] is False and poller.status()["swapped"] == []
        # dl1 replaced by dl2 (configured, no tenant until now): dl2 charged to A from its
        # initial register, dl1 no more
        polled(rt, clock, 10)
        old_final, new_start = register(sim, "dl1") * 10, register(sim, "dl2")
        replaced = send(broker, command(rt, master_key, CommandKind.METER_CHANGE, {
            "op": "replace", "meter": "dl1", "new": "dl2", "final_wh": old_final,
            "initial_wh": new_start, "new_ratio": 1, "reason": "meter replaced"}))  # fmt: skip
        assert replaced.status == ReplyStatus.OK and replaced.text == "", replaced
        assert (replaced.result["old"], replaced.result["new"]) == ("dl1", "dl2")
        assert c.meters_of("A") == ("dl2",) and c.billing["dl2"].ratio == 1
        before = c.balance("A")
        polled(rt, clock, 500)  # dl2: 3600 W
        used = register(sim, "dl2") - new_start  # whole 10 Wh: 85 each, no rounding
        assert used >= 490 and c.balance("A") == before - (2 * used * PRICE + 1000) // 2000


def test_a_swap_with_its_work_order_by_command_needs_no_confirm(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    """METER_CHANGE replace with ``meter_number``: the poller's METER_NUMBER_CHANGED to it
    is not held, whether it comes after the work order or came before it."""
    key = public_key_bytes(master_key)
    clock = ManualClock(START)
    with simulator(tmp_path, clock) as sim, gateway(tmp_path, sim, broker, key) as rt:
        c, poller = rt.charger, rt.pollers["dl"]
        assert c is not None

        def replace_by(number: str, final_wh: int, initial_wh: int) -> Any:
            return send(broker, command(rt, master_key, CommandKind.METER_CHANGE, {
                "op": "replace", "meter": "dl1", "new": "dl1", "final_wh": final_wh,
                "initial_wh": initial_wh, "meter_number": number,
                "reason": "work order 31"}))  # fmt: skip

        polled(rt, clock, 60)
        bad = replace_by("99000000001", register(sim, "dl1"), 0)
        assert (bad.status, bad.reason) == (ReplyStatus.REFUSED, ReasonCode.BAD_ARGUMENTS)
        assert "12 digits" in bad.text
        # the work order first (the line quiet while the technician swaps), then the poll
        for bus in rt.buses.values():
            bus.stop()
        final = register(sim, "dl1")
        sim.control("dl1", "swap", {"meter_number": "990000000011", "energy_import_wh": 2_000})
        done = replace_by("990000000011", final, 2_000)
        assert done.status == ReplyStatus.OK and done.result["new"] == "dl1", done
        charged = c.balance("A")
        for bus in rt.buses.values():
            bus.start()
        wait_for(lambda: poller.meters["dl1"].number == "990000000011", 10, "number read")
        assert "dl1" in c.billing and c.status()["held"] == []
        assert poller.status()["swapped"] == []
        polled(rt, clock, 200)  # 1800 W: 100 Wh from the new meter's 2000
        used = register(sim, "dl1") - 2_000
        assert used >= 90 and c.balance("A") == charged - (2 * used * PRICE + 1000) // 2000
        # the swap seen first (held, "swapped"), its work order after: no confirm needed
        old_final = register(sim, "dl1")
        sim.control("dl1", "swap", {"meter_number": "990000000012", "energy_import_wh": 0})
        wait_for(lambda: "dl1" not in c.billing, 10, "dl1 held")
        assert poller.status()["swapped"] == ["dl1"]
        polled(rt, clock)
        late = replace_by("990000000012", old_final, register(sim, "dl1"))
        assert late.status == ReplyStatus.OK, late
        assert "dl1" in c.billing and c.status()["held"] == []
        assert poller.status()["swapped"] == []
