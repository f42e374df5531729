"""The TARIFF command end to end: the master signs a late tariff version, a real
Mosquitto carries it, the gateway keeps it, re-rates the journal and answers with the
adjustment (退补) per account; the version is in ``gateway status`` and survives a restart.

Money in 0.0001 yuan.  cost(Wh, price) = round_half_up(Wh x price / 1000) per meter and
tariff version, cumulative (design.md, "Money and energy")."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from polling import START
from sqlite_utils import Database
from test_commands import YUAN, command, gateway, master_key, send, state
from test_master_command_cli import cli, keys
from test_master_command_cli import send as cli_send

from gateway.clock import ManualClock
from gateway.commands.keys import public_key_bytes
from gateway.mosquitto import Mosquitto
from gateway.protocols.command import ArgValue, CommandKind, ReasonCode, ReplyStatus
from gateway.protocols.quantities import Quantity, Reading
from gateway.runtime import Runtime
from gateway.store.ledger import check_balances

__all__ = ["master_key"]  # the fixture, shared with test_commands

H = 3_600_000


def ms(rt: Runtime) -> int:
    return rt.now_ms()


def inject(rt: Runtime, ts_ms: int, wh: int) -> None:
    """A reading of dl1 as its bus would journal it (the buses are stopped)."""
    assert rt.charger is not None
    rt.charger.submit(Reading("dl1", ts_ms, {Quantity.ENERGY_IMPORT: wh}))
    assert rt.charger.wait_idle(10)


def test_a_signed_late_tariff_rerates_and_answers_with_the_adjustment(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    clock = ManualClock(START)
    key = public_key_bytes(master_key)
    with gateway(tmp_path, broker, key, clock) as rt:
        fund = {"account": "A", "amount": 100 * YUAN, "top_up_id": "T-1"}
        assert send(broker, command(rt, master_key, CommandKind.TOP_UP, fund)).status == 0
        for bus in rt.buses.values():  # dl1's registers from here on are ours
            bus.stop()
        t0 = ms(rt)
        # dl1 (account A, flat v1 0.8500): the simulated meter's last poll said 10_000 Wh
        inject(rt, t0, 10_000)
        inject(rt, t0 + H, 11_000)  # 1_000 Wh: cost(1_000, 8500) = 8_500
        clock.advance(timedelta(hours=3))
        inject(rt, t0 + 2 * H, 12_500)  # 1_500 Wh: cum 2_500 -> 21_250 - 8_500 = 12_750
        inject(rt, t0 + 3 * H, 13_000)  # 500 Wh: cum 3_000 -> 25_500 - 21_250 = 4_250
        before, entries, _ = state(rt)
        assert before == 100 * YUAN - 25_500
        # v2 (0.9000) took effect at t0 + 1.5 h; the master sends it at t0 + 3 h
        v2: dict[str, ArgValue] = {
            "id": "flat",
            "version": 2,
            "effective": t0 + 3 * H // 2,
            "kind": "flat",
            "price": 9000,
        }
        cmd = command(rt, master_key, CommandKind.TARIFF, v2)
        reply = send(broker, cmd)
        assert (reply.status, reply.reason) == (ReplyStatus.OK, ReasonCode.NONE), reply
        # re-rated from dl1's last reading before the effective time (t0 + 1 h):
        # [+1 h, +2 h] 1_500 Wh, half before t0 + 1.5 h: 750 Wh v1, 750 Wh v2
        #   v1: cum 1_750 -> cost 14_875 - 8_500 already = 6_375
        # [+2 h, +3 h] 500 Wh v2: v2 1_250 Wh x 9000 / 1000 = 11_250
        # re-rated 6_375 + 11_250 = 17_625; posted 12_750 + 4_250 = 17_000: +625 owed
        assert reply.result["late"] is True and reply.result["readings"] == 2
        adjustments = reply.result["adjustments"]
        assert isinstance(adjustments, dict) and set(adjustments) == {"A"}
        a = adjustments["A"]
        assert isinstance(a, dict)
        assert (a["amount"], a["rerated"], a["posted"]) == (-625, 17_625, 17_000)
        assert a["balance"] == before - 625
        assert reply.result["not_rerated"] == {}
        assert reply.result["in_force"] == {
            "flat": {"version": 2, "kind": "flat", "effective": t0 + 3 * H // 2}
        }
        assert "applied late" in _reason(rt, a["entry_id"])
        assert rt.status()["tariffs"] == reply.result["in_force"]
        after = state(rt)
        assert after[:2] == (before - 625, entries + 1)

        again = send(broker, cmd)  # the very same command: a replay, nothing done
        assert (again.status, again.reason) == (ReplyStatus.REFUSED, ReasonCode.REPLAYED)
        other = send(broker, command(rt, master_key, CommandKind.TARIFF, v2))  # new id
        assert (other.status, other.reason) == (ReplyStatus.REFUSED, ReasonCode.POLICY)
        assert "not newer" in other.text
        bad = send(broker, command(rt, master_key, CommandKind.TARIFF, {**v2, "price": "0.95"}))
        assert (bad.status, bad.reason) == (ReplyStatus.REFUSED, ReasonCode.BAD_ARGUMENTS)
        assert "0.95 yuan/kWh is written 9500" in bad.text
        assert state(rt)[:2] == after[:2]
        inject(rt, t0 + 4 * H, 14_000)  # 1_000 Wh more, at v2: 9_000
        assert state(rt)[0] == after[0] - 9_000
        _balanced(rt)
        balance = state(rt)[0]
    with gateway(tmp_path, broker, key, clock) as rt:  # a restart keeps the version
        assert rt.charger is not None
        assert rt.charger.book.at("flat", clock.now()).version == 2
        status = rt.status()["tariffs"]
        assert isinstance(status, dict) and status["flat"]["version"] == 2
        assert state(rt)[0] == balance
        _balanced(rt)


def _reason(rt: Runtime, entry_id: object) -> str:
    with sqlite3.connect(rt.store_path) as conn:
        row = conn.execute("SELECT reason FROM ledger WHERE id = ?", (entry_id,)).fetchone()
    return str(row[0])


def _balanced(rt: Runtime) -> None:
    assert rt.writer is not None
    rt.writer.flush(10)
    db = Database(sqlite3.connect(rt.store_path))
    try:
        assert check_balances(db) == []
    finally:
        db.conn.close()


def test_the_cli_sends_a_version_written_as_in_the_config(
    broker: Mosquitto, tmp_path: Path
) -> None:
    public = keys(tmp_path / "keys")
    key = tmp_path / "keys" / "master-command.key"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "{id: flat, version: 2, effective: '2030-01-01T00:00:00+08:00',\n"
        " kind: flat, price: 0.9}\n"  # line 2, column 21: the price
    )
    done = cli(*cli_send(broker, key, "--kind", "tariff", "--tariff", str(bad)))
    assert done.returncode == 2  # refused before anything is sent
    assert f"{bad}:2:21: price: prices must be integers" in done.stderr
    assert "0.9 yuan/kWh is written 9000" in done.stderr
    tou = tmp_path / "tou.yaml"
    tou.write_text(
        textwrap.dedent(
            """\
            id: flat
            version: 2
            effective: "2030-01-01T00:00:00+08:00"
            kind: tou
            slots: [{start: "00:00", slot: 4}, {start: "08:00", slot: 2}]
            prices: {2: 9000, 4: 3000}
            """
        )
    )
    with gateway(tmp_path, broker, public, ManualClock(START)) as rt:
        done = cli(*cli_send(broker, key, "--kind", "tariff", "--tariff", str(tou), "--json"))
        assert done.returncode == 0, done.stderr + done.stdout
        reply = json.loads(done.stdout)
        assert reply["status"] == "OK" and reply["result"]["late"] is False
        assert rt.charger is not None
        version = rt.charger.book.versions("flat")[-1]
        assert (version.version, version.kind) == (2, "tou")
        assert dict(version.prices) == {2: 9000, 4: 3000}  # type: ignore[union-attr]
        status = rt.status()["tariffs"]
        assert isinstance(status, dict)
        assert status["flat"]["version"] == 1  # v2 announced, not yet in force
        assert status["flat"]["next"]["version"] == 2
