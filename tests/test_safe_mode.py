"""Safe mode (design.md, "What may never be lost"): a store damaged at start is moved
aside and every balance restarts from zero, so the relays trip nobody until the master,
which holds the ledger entries the gateway sent before, restores the balances and sends
RELAY_RESUME.

End to end: a gateway (Runtime with charging, relays and uplink) polls a simulated
meter through a pty, its batches reach a real Mosquitto and the master's ingest; the
store file is damaged between two runs; signed commands come from the master's key."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from polling import START, M, sim_yaml, wait_for
from test_commands import GW, command, connected, send

from gateway.charging import Charger
from gateway.clock import ManualClock
from gateway.commands.keys import public_key_bytes
from gateway.master.ingest import Master
from gateway.master.store import MasterStore
from gateway.mosquitto import Mosquitto
from gateway.prepaid import PrepaidState
from gateway.protocols.batch import Batch, LedgerEntry, MeterEvent
from gateway.protocols.command import ArgValue, CommandKind, ReplyStatus
from gateway.protocols.quantities import EventCode
from gateway.relays.controller import SAFE_MODE, RelayController
from gateway.runtime import Runtime
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.status import format_status
from gateway.store.journal import JournalReader
from gateway.store.ledger import EntryKind, TopUp

METER = M("d1", "dl", "dlt645", 1, energy_wh=1_000_000, watts=3_600, turnaround_ms=5)
TRIP_REQUEST_BYTES = 32  # 4 FE + 68 A0..A5 68 1C 10 + 16 data bytes + CS 16
PAGE = 4096


def config_text(sim: Simulator, broker_host: str, broker_port: int, key: bytes) -> str:
    """Prepaid account A on one DL/T 645 meter; 60 s at 3.6 kW cost 510 (0.0001 yuan);
    an overdraft limit of 10 keeps a new account (balance 0) from being due at once."""
    return f"""\
gateway_id: {GW}
serial_buses:
  - {{name: dl, port: '{sim.bus("dl").path}', protocol: dlt645, baud: 38400, parity: E}}
meters:
  - {{id: d1, bus: dl, address: '{METER.address}', account: A}}
accounts:
  - {{id: A, type: prepaid, tariff: flat}}
tariffs:
  - {{id: flat, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat, price: 8500}}
billing: {{thresholds: {{alarm1: 0, alarm2: 0, overdraft_limit: 10}}}}
uplink: {{host: {broker_host}, port: {broker_port}, client_id: gateway-test-gw}}
commands: {{public_key: '{base64.b64encode(key).decode()}'}}
relays: {{confirm_delay_s: 0.1, confirm_attempts: 3}}
"""


@pytest.fixture
def master_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@contextmanager
def simulator(tmp: Path, clock: ManualClock) -> Iterator[Simulator]:
    text = sim_yaml([("dl", "dlt645", 38400)], [METER])
    with Simulator(parse_sim_config(text, "s.yaml", link_dir=str(tmp)), clock) as sim:
        yield sim


def step(rt: Runtime, clock: ManualClock, seconds: float) -> None:
    """Move the calendar on; wait until the meter was read at the new time and charged."""
    clock.advance(seconds)
    ts_ms = int(clock.now().timestamp() * 1000)

    def polled() -> bool:
        states = [s for p in rt.pollers.values() for s in p.meters.values()]
        return all((s.energy_ts_ms or -1) >= ts_ms for s in states)

    wait_for(polled, 20, "the meter polled")
    assert rt.charger is not None
    rt.charger.wait_idle(10)


def parts(rt: Runtime) -> tuple[RelayController, Charger]:
    assert rt.relays is not None and rt.charger is not None
    return rt.relays, rt.charger


def trip_requests(sim: Simulator) -> int:
    """Trip (or close) requests on the wire, from the simulator's bus log."""
    log = sim.bus("dl").log
    return sum(1 for e in log if e.direction == "request" and e.nbytes == TRIP_REQUEST_BYTES)


def relay_closed(sim: Simulator) -> bool:
    closed = sim.truth("d1")["meters"]["d1"]["relay_closed"]
    assert isinstance(closed, bool)
    return closed


def events(rt: Runtime, code: int) -> list[MeterEvent]:
    with JournalReader(rt.store_path) as reader:
        return [e for _, e in reader.events(limit=100_000) if e.code == code]


def damage(path: Path) -> None:
    """Garbage over every page of the store file but the first (the header and schema)."""
    size = path.stat().st_size
    assert size > 3 * PAGE, size
    with path.open("r+b") as stream:
        for page in range(1, size // PAGE):
            stream.seek(page * PAGE)
            stream.write(os.urandom(PAGE))


def at_master(db: Path, what: str, check: Callable[[MasterStore], object]) -> None:
    def ok() -> bool:
        with MasterStore.open(db, now_ms=lambda: 0, readonly=True) as store:
            return bool(check(store))

    wait_for(ok, 30, what)


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60
    )


def balances(db: Path) -> dict[str, Any]:
    out = gateway_cli("master", "balances", "--db", str(db), "--gateway", GW, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert isinstance(doc, dict)
    return doc


def stats_mode(db: Path) -> str:
    out = gateway_cli("master", "stats", "--db", str(db))
    assert out.returncode == 0, out.stderr
    header, row, _ = out.stdout.splitlines()
    assert header.split()[-1] == "mode"
    return row.split("  ")[-1].strip()


def test_a_damaged_store_trips_nobody_until_the_master_restores_and_resumes(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    clock = ManualClock(START)
    master_db, store = tmp_path / "master.db", tmp_path / "gw.db"
    key = public_key_bytes(master_key)
    with (
        simulator(tmp_path, clock) as sim,
        Master(master_db, broker.host, broker.port),
    ):
        text = config_text(sim, broker.host, broker.port, key)
        # 1. a healthy run: a top-up of 1000, 60 Wh charged (510): A at 490, at the master
        with connected(text, tmp_path, broker, clock) as rt:
            assert rt.charger is not None and rt.relays is not None
            assert rt.relays.safe_mode is None
            step(rt, clock, 0)  # the baseline reading
            now = rt.now_ms()
            assert rt.charger.top_up(TopUp("t1", "A", EntryKind.TOP_UP, 1_000, now)).result(10)
            step(rt, clock, 60)
            assert rt.charger.balance("A") == 490
            at_master(
                master_db,
                "the first run's ledger",
                lambda s: [e.balance_after for e in s.ledger(GW)][-1:] == [490],
            )
        assert balances(master_db)["accounts"] == {
            "A": {
                "vouched": 490,
                "gateway": 490,
                "restore": 0,
                "before_ms": None,
                "last_ms": int(clock.now().timestamp() * 1000),
                "entries": 2,
            }
        }
        before_ms = int(clock.now().timestamp() * 1000)
        damage(store)
        # 2. the damaged store is moved aside: balances from zero, safe mode, no trip
        with connected(text, tmp_path, broker, clock) as rt:
            assert rt.store is not None and rt.store.report.moved_aside is not None
            relays, charger = parts(rt)
            moved = rt.store.report.moved_aside
            reason = f"store damaged at start: moved aside to {moved}"
            status: Any = rt.status()["relays"]
            assert status["safe_mode"]["reason"] == reason
            assert [a["kind"] for a in status["alarms"]] == ["safe_mode"]
            shown = format_status(rt.status())
            assert "SAFE MODE since " in shown and f": {reason}: no trips until" in shown
            (entered,) = events(rt, EventCode.SAFE_MODE)
            assert (entered.meter, entered.detail["state"]) == ("d1", "entered")
            assert entered.detail["reason"] == reason and entered.detail["accounts"] == 1
            assert charger.balance("A") == 0
            step(rt, clock, 0)  # the baseline reading of the new store
            step(rt, clock, 60)  # A at -510: beyond the overdraft limit, due to trip
            assert charger.state("A") == PrepaidState.DUE_TO_TRIP
            wait_for(lambda: relays.status()["blocked"] == {"A": SAFE_MODE}, 10, "blocked")
            time.sleep(1.0)  # a trip would be on the wire by now (confirm delay 0.1 s)
            assert trip_requests(sim) == 0 and relay_closed(sim)
            assert events(rt, EventCode.RELAY_TRIPPED) == []
            result = relays.test("d1").result(5)
            assert result["ok"] is False and "safe mode" in str(result["error"])
            at_master(master_db, "the safe-mode event", lambda s: s.safe_mode(GW) is not None)
        assert stats_mode(master_db) == "safe mode"
        # 3. a restart: the new store is healthy, safe mode is remembered
        with connected(text, tmp_path, broker, clock) as rt:
            assert rt.store is not None and rt.store.report.moved_aside is None
            relays, charger = parts(rt)
            safe = relays.status()["safe_mode"]
            assert isinstance(safe, dict) and safe["reason"] == reason
            assert safe["since_ms"] == entered.ts_ms
            assert len(events(rt, EventCode.SAFE_MODE)) == 1  # not entered again
            step(rt, clock, 0)
            step(rt, clock, 60)  # A at -1020
            wait_for(lambda: relays.status()["blocked"] == {"A": SAFE_MODE}, 10, "blocked")
            time.sleep(1.0)
            assert trip_requests(sim) == 0 and relay_closed(sim)
            # the master vouches for 490 before the damage, less the 1020 charged since
            at_master(
                master_db,
                "the second epoch's ledger",
                # (the master lists epochs by their random id, not in time order)
                lambda s: -1020 in [e.balance_after for e in s.ledger(GW)],
            )
            doc = balances(master_db)
            assert doc["safe_mode"]["on"] is True
            assert doc["safe_mode"]["reason"] == reason
            (row,) = doc["accounts"].values()
            assert row["vouched"] == 490 - 1020 and row["gateway"] == -1020
            assert row["restore"] == 490 and row["before_ms"] == before_ms
            table = gateway_cli("master", "balances", "--db", str(master_db), "--gateway", GW)
            assert table.returncode == 0, table.stderr
            lines = table.stdout.splitlines()
            assert lines[0].startswith(f"gateway {GW}: SAFE MODE since ")
            assert lines[2].split()[:4] == ["A", "-530", "-1020", "490"]
            # the operator restores the balance, then resumes: A is still due (-530)
            restore: dict[str, ArgValue] = {
                "account": "A",
                "amount": 490,
                "top_up_id": "restore-A",
                "entry": "compensation",
                "reason": "safe mode: balance restored from the master's ledger",
            }
            reply = send(broker, command(rt, master_key, CommandKind.TOP_UP, restore))
            assert reply.status == ReplyStatus.OK, reply
            assert charger.balance("A") == -530
            assert trip_requests(sim) == 0 and relay_closed(sim)  # still safe mode
            reply = send(broker, command(rt, master_key, CommandKind.RELAY_RESUME, {}))
            assert reply.status == ReplyStatus.OK, reply
            assert reply.result["was_safe_mode"] is True
            assert reply.result["safe_mode_reason"] == reason
            wait_for(lambda: events(rt, EventCode.RELAY_TRIPPED) != [], 20, "the trip")
            (tripped,) = events(rt, EventCode.RELAY_TRIPPED)
            assert tripped.detail["reason"] == "resume" and tripped.detail["balance"] == -530
            assert trip_requests(sim) >= 1 and not relay_closed(sim)
            status = relays.status()
            assert status["safe_mode"] is None and status["alarms"] == []
            assert status["blocked"] == {}
            ended = events(rt, EventCode.SAFE_MODE)[-1]
            assert ended.detail["state"] == "ended" and ended.detail["reason"] == reason
            at_master(
                master_db,
                "the end of safe mode",
                lambda s: not getattr(s.safe_mode(GW), "on", True),
            )
        assert stats_mode(master_db) == "-"
        # restored: the master and the gateway agree (the restoration is not counted twice)
        (row,) = balances(master_db)["accounts"].values()
        assert (row["vouched"], row["gateway"], row["restore"]) == (-530, -530, 0)
        # 4. another restart: safe mode stays ended
        with connected(text, tmp_path, broker, clock) as rt:
            assert rt.relays is not None and rt.relays.safe_mode is None


def _batch(epoch: int, seq: int, ledger: list[LedgerEntry], events: list[MeterEvent]) -> Batch:
    return Batch(GW, epoch, seq, (), tuple(events), tuple(ledger))


def test_master_balances_over_epochs_from_batches(tmp_path: Path) -> None:
    """The master's arithmetic on batches built by the protocol code: two accounts, one
    with no entry after the damage; a compensation while in safe mode is a restoration,
    one after it ended is counted."""
    clock = [1_000]

    def now() -> int:
        clock[0] += 1_000
        return clock[0]

    charge, top, comp = int(EntryKind.CHARGE), int(EntryKind.TOP_UP), int(EntryKind.COMPENSATION)
    old = [
        LedgerEntry(1, "A", 10_000, top, 5_000, 5_000, "t1", 0),
        LedgerEntry(2, "B", 11_000, top, 700, 700, "t2", 0),
        LedgerEntry(3, "A", 12_000, charge, -1_200, 3_800, "r", 1),
    ]
    entered = MeterEvent(
        "d1",
        20_000,
        int(EventCode.SAFE_MODE),
        {"state": "entered", "reason": "x", "since_ms": 20_000},
    )
    new = [
        LedgerEntry(1, "A", 21_000, charge, -300, -300, "r", 1),
        LedgerEntry(2, "A", 22_000, comp, 3_800, 3_500, "restore-A", 0),
    ]
    ended = MeterEvent(
        "d1",
        23_000,
        int(EventCode.SAFE_MODE),
        {"state": "ended", "reason": "x", "since_ms": 20_000},
    )
    later = [LedgerEntry(3, "A", 24_000, comp, 100, 3_600, "goodwill", 0)]
    with MasterStore.open(tmp_path / "m.db", now_ms=now) as store:
        store.store_batch(_batch(7, 1, old, []), received_ms=now(), size=1)
        assert [(b.account, b.vouched, b.gateway) for b in store.balances(GW)] == [
            ("A", 3_800, 3_800),
            ("B", 700, 700),
        ]
        store.store_batch(_batch(8, 1, [], [entered]), received_ms=now(), size=1)
        report = store.safe_mode(GW)
        assert report is not None and report.on and report.epoch == 8
        assert store.summary()[0].safe_mode
        got = {
            b.account: (b.vouched, b.gateway, b.restore, b.before_ms) for b in store.balances(GW)
        }
        assert got == {"A": (3_800, 0, 3_800, 12_000), "B": (700, 0, 700, 11_000)}
        store.store_batch(_batch(8, 2, new, [ended]), received_ms=now(), size=1)
        assert not store.summary()[0].safe_mode
        now_ = {b.account: (b.vouched, b.gateway, b.restore) for b in store.balances(GW)}
        assert now_ == {"A": (3_500, 3_500, 0), "B": (700, 0, 700)}  # B not restored yet
        store.store_batch(_batch(8, 3, later, []), received_ms=now(), size=1)
        (a, _) = store.balances(GW)
        assert (a.vouched, a.gateway, a.last_ms, a.entries) == (3_600, 3_600, 24_000, 5)
