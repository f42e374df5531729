"""Charging: a reading and its charges in one durable transaction (gateway.charging).

Against the simulator: balances fall by exactly the rounded cost of the energy the
simulator's truth registers say was used.  Directly: discontinuity, rollover, the
untrusted clock with a TOU tariff, unique charge references.  A SIGKILL'd child
posting readings: afterwards no reading without its charge, no charge twice."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from polling import START, M, meter_lines, sim_yaml, wait_for
from sqlite_utils import Database

from gateway.charging import Charger, post_reading
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, parse_config
from gateway.poller import REGISTER_RANGE_WH, PollSettings
from gateway.protocols.quantities import (
    FLAG_DISCONTINUITY,
    FLAG_ROLLOVER,
    FLAG_TIME_UNTRUSTED,
    Quantity,
    Reading,
)
from gateway.runtime import Runtime
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.store import Store
from gateway.store.journal import JournalReader, Kind
from gateway.store.ledger import (
    EntryKind,
    Ledger,
    LedgerReader,
    TopUp,
    check_balances,
    sync_accounts,
)

PRICE = 8500  # 0.8500 yuan/kWh, flat
FUND = 10_000_000  # 1000 yuan
TOU_VALLEY = 2979  # slot 4 of the TOU tariff below (00:00-24:00 all valley)

TARIFFS = f"""
accounts:
  - {{id: A, type: prepaid, tariff: flat}}
  - {{id: P, type: unbilled, tariff: flat}}
  - {{id: T, type: prepaid, tariff: tou}}
tariffs:
  - {{id: flat, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat,
      price: {PRICE}}}
  - id: tou
    version: 1
    effective: "2024-01-01T00:00:00+08:00"
    kind: tou
    slots: [{{start: "00:00", slot: 4}}]
    prices: {{1: 1, 2: 1, 3: 1, 4: {TOU_VALLEY}}}
"""


def half_up(wh: int, price: int) -> int:
    """round_half_up(wh / 1000 x price): the whole rounding rule for one flat meter."""
    return (2 * wh * price + 1000) // 2000


def reg(wh: int) -> int:
    """A DL/T 645 register (XXXXXX.XX kWh) holds whole 10 Wh."""
    return wh // 10 * 10


def config_yaml(port: str, ms: list[tuple[M, str | None]]) -> str:
    lines = [
        "gateway_id: test-gw",
        "serial_buses:",
        f"  - {{name: dl, port: '{port}', protocol: dlt645, baud: 38400, parity: E}}",
        "meters:",
        *meter_lines(ms),
    ]
    lines.append("uplink: {host: localhost}")
    return "\n".join(lines) + "\n" + TARIFFS


def opened_store(path: Path, config: GatewayConfig, fund: int = 0, **kw: Any) -> Store:
    """A store at ``path`` with the configuration's accounts opened (on START's day) and,
    with ``fund``, account A topped up by that much, before any charging."""
    store = Store.open(path, gateway_id="gw", **kw)
    store.writer.call(
        lambda db: sync_accounts(db, config.accounts, opened_day=START.date(), opened_ms=0),
        durable=True,
    ).result(10)
    if fund:
        funded = TopUp("fund", "A", EntryKind.TOP_UP, fund, 0)
        assert Ledger(store).top_up(funded).result(10).applied
    return store


def test_balances_fall_by_the_simulated_energy(tmp_path: Path) -> None:
    # dl1 (CT 60) and dl2 draw on one prepaid account A; dl3 is unbilled; dl4 has none.
    ms = [
        (M("dl1", "dl", "dlt645", 1, ct=60, energy_wh=123_456, watts=700, turnaround_ms=5), "A"),
        (M("dl2", "dl", "dlt645", 2, energy_wh=5_000, watts=2_345, turnaround_ms=5), "A"),
        (M("dl3", "dl", "dlt645", 3, energy_wh=7_000, watts=900, turnaround_ms=5), "P"),
        (M("dl4", "dl", "dlt645", 4, energy_wh=9_000, watts=400, turnaround_ms=5), None),
    ]
    clock = ManualClock(START)
    sim_config = parse_sim_config(
        sim_yaml([("dl", "dlt645", 38400)], [m for m, _ in ms]), "s.yaml", link_dir=str(tmp_path)
    )
    path = tmp_path / "gw.db"
    with Simulator(sim_config, clock) as sim:
        config = parse_config(config_yaml(sim.bus("dl").path, ms), "gw.yaml")
        # A is funded before the gateway starts: a prepaid account at 0 is due to trip, and
        # the relays would open dl1 and dl2 at once (no consumption to charge)
        opened_store(path, config, FUND).close()
        rt = Runtime(
            config,
            store_path=path,
            clock=clock,
            # The manual clock jumps 937 s while a poll may be in flight: a reading can carry
            # the time before a jump and the energy after it, which the poller would rightly
            # call an impossible jump (a discontinuity, not charged). Flat tariff: timing does
            # not change the bill, so the jump check is widened here.
            settings=PollSettings(interval=0, max_power_w=10**9),
            status_socket=None,
            reopen_max=0.2,
            charging=True,
        )
        with rt:
            poller = rt.pollers["dl"]
            for step in range(5):
                if step:
                    clock.advance(timedelta(seconds=937))
                now_ms = int(clock.now().timestamp() * 1000)

                def read(now_ms: int = now_ms) -> bool:
                    return all(
                        (s.energy_ts_ms or -1) >= now_ms and s.energy
                        for s in poller.meters.values()
                    )

                wait_for(read, 10, f"every meter read at step {step}")
            for bus in rt.buses.values():
                bus.stop()
            truth = {m.id: sim.truth(m.id)["meters"][m.id]["energy_import_wh"] for m, _ in ms}
            assert rt.charger is not None
            wait_for(lambda: rt.writer is not None and rt.writer.stats().queue_depth == 0, 5, "q")
    # expected from the truth: (register now - register at the start) x CT, per meter
    used = {m.id: (reg(truth[m.id]) - reg(m.energy_wh)) * m.ct for m, _ in ms}
    assert used["dl1"] > 0 and used["dl2"] > 0
    with JournalReader(path) as reader:
        readings = [
            r for _, r in reader.records(Kind.READINGS, limit=100_000) if isinstance(r, Reading)
        ]
    for m, _ in ms:  # the journal's first and last registers are the truth's
        mine = [r.values[Quantity.ENERGY_IMPORT] for r in readings if r.meter == m.id]
        assert mine[0] == reg(m.energy_wh) * m.ct and mine[-1] == reg(truth[m.id]) * m.ct
    with LedgerReader(path) as ledger:
        balances = {a.id: a.balance for a in ledger.accounts()}
        entries = ledger.entries(limit=100_000)
    # each meter keeps its own rounding accumulator: its cost is rounded once in total
    assert balances["A"] == FUND - (half_up(used["dl1"], PRICE) + half_up(used["dl2"], PRICE))
    assert balances["P"] == 0 and balances["vacancy"] == 0 and balances["T"] == 0
    assert {e.account for e in entries} == {"A"}
    assert rt.charger.state("A") == "normal"  # never tripped
    assert len({e.reference for e in entries}) == len(entries)
    db = Database(sqlite3.connect(path))
    try:
        assert check_balances(db) == []
        # the rating state holds the last reading of each rated meter
        state = dict(db.execute("SELECT meter, last_energy_wh FROM rating_state").fetchall())
        assert state == {m.id: reg(truth[m.id]) * m.ct for m, a in ms if a}
    finally:
        db.conn.close()


# --- directly: one transaction per reading --------------------------------------------


def plain_config() -> GatewayConfig:
    ms: list[tuple[M, str | None]] = [
        (M("m1", "dl", "dlt645", 1), "A"),
        (M("m2", "dl", "dlt645", 2, ct=60), "A"),
        (M("t1", "dl", "dlt645", 3), "T"),
    ]
    return parse_config(config_yaml("/dev/null", ms), "gw.yaml")


@pytest.fixture
def charged(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = plain_config()
    store = opened_store(tmp_path / "gw.db", config, max_delay=0.01)
    charger = Charger(store.writer, config)

    def post(meter: str, ts_s: int, wh: int, flags: int = 0) -> int:
        ts_ms = int(START.timestamp() * 1000) + ts_s * 1000
        reading = Reading(meter, ts_ms, {Quantity.ENERGY_IMPORT: wh}, flags)
        billing = charger.billing[meter]
        done = store.writer.call(
            lambda db: post_reading(db, reading, billing, charger.book), durable=True
        ).result(10)
        return sum(-e.amount for e in done.entries)

    yield post, store
    store.close()


def test_first_reading_is_a_baseline_and_deltas_are_charged(charged) -> None:  # type: ignore[no-untyped-def]
    post, _ = charged
    assert post("m1", 0, 1_000_000) == 0  # baseline
    assert post("m1", 60, 1_000_001) == 9  # cum 1 Wh x 8500 / 1000 = 8.5 -> half up 9
    assert post("m1", 120, 1_000_002) == 8  # cum 2 Wh -> 17.0 = 17; 17 - 9 posted = 8
    assert post("m1", 180, 1_001_002) == 8_500  # cum 1002 Wh -> 8517; 8517 - 17


def test_discontinuity_and_rollover(charged) -> None:  # type: ignore[no-untyped-def]
    post, _ = charged
    post("m1", 0, 5_000)
    # a jump flagged discontinuity: no charge, new baseline
    assert post("m1", 60, 9_000_000, FLAG_DISCONTINUITY) == 0
    assert post("m1", 120, 9_001_000) == 8_500  # 1 kWh x 0.85 yuan
    # m2 (CT 60): rollover: consumption = new + range x 60 - old
    span = REGISTER_RANGE_WH * 60
    post("m2", 0, span - 600)
    assert post("m2", 60, 1_400, FLAG_ROLLOVER) == half_up(2_000, PRICE)  # 17000
    # a fall without a flag: no credit, no charge, a new baseline
    assert post("m2", 120, 1_000) == 0
    assert post("m2", 180, 2_000) == 8_500


def test_untrusted_clock_defers_time_of_use(charged) -> None:  # type: ignore[no-untyped-def]
    post, _ = charged
    post("t1", 0, 0)
    assert post("t1", 60, 1_000, FLAG_TIME_UNTRUSTED) == 0  # TOU: deferred
    assert post("t1", 120, 2_000, FLAG_TIME_UNTRUSTED) == 0
    # the first trusted reading rates the whole stretch (2 kWh, all valley)
    assert post("t1", 180, 2_000) == 2 * TOU_VALLEY
    # a flat tariff is rated while untrusted
    post("m1", 0, 0)
    assert post("m1", 60, 1_000, FLAG_TIME_UNTRUSTED) == PRICE


def test_a_charge_reference_is_unique(charged) -> None:  # type: ignore[no-untyped-def]
    _, store = charged

    def twice(db: Database) -> None:
        for _ in range(2):
            db.execute(
                "INSERT INTO ledger (account, ts_ms, kind, amount, balance_after, reference)"
                " VALUES ('A', 0, 1, -1, -1, 'm1:1:0')"
            )

    with pytest.raises(sqlite3.IntegrityError):
        store.writer.call(twice, durable=True).result(10)


# --- SIGKILL while posting ---------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from datetime import date
    from gateway.charging import Charger, load_state, post_reading
    from gateway.config import parse_config
    from gateway.protocols.quantities import Quantity, Reading
    from gateway.store import Store
    from gateway.store.ledger import sync_accounts

    config = parse_config(open(sys.argv[2]).read(), "gw.yaml")
    store = Store.open(sys.argv[1], gateway_id="gw-kill", max_delay=0.01)
    day = date(2024, 6, 1)
    store.writer.call(
        lambda db: sync_accounts(db, config.accounts, opened_day=day, opened_ms=0),
        durable=True,
    ).result(30)
    charger = Charger(store.writer, config)
    last = store.writer.call(lambda db: load_state(db, "m1")).result(30)
    base = 1_717_214_400_000  # 2024-06-01T04:00Z
    i = 0 if last is None else (last.last_ts_ms - base) // 1000 + 1
    print("ready", flush=True)
    while i < int(sys.argv[3]):
        r = Reading("m1", base + i * 1000, {Quantity.ENERGY_IMPORT: 10_000 + 100 * i})
        charger.post(r, charger.billing["m1"]).result(30)
        print(i, flush=True)
        i += 1
    print("done", flush=True)
    """
)


def test_sigkill_while_posting_leaves_no_reading_without_its_charge(tmp_path: Path) -> None:
    path, cfg = tmp_path / "gw.db", tmp_path / "gw.yaml"
    cfg.write_text(config_yaml("/dev/null", [(M("m1", "dl", "dlt645", 1), "A")]))
    # many more readings than the kills can let through: each run is cut short (a run of
    # 120 once finished between reading 8 lines and the kill, on a fast fsync)
    count, acked = 600, -1
    for kill in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(cfg), str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        for _ in range(8):
            line = child.stdout.readline().strip()
            if line.isdigit():
                acked = max(acked, int(line))
        time.sleep(0.003 * kill)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        for line in child.stdout.read().split():
            if line.isdigit():
                acked = max(acked, int(line))
        child.stdout.close()
    assert 0 <= acked < count - 1  # the kills cut the runs short
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(cfg), str(count)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split()[-1] == "done", done.stderr[-2000:]
    db = Database(sqlite3.connect(path))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT id, ts_ms FROM readings ORDER BY id").fetchall()
        ts = [int(t) for _, t in rows]
        # every reading once, in order; each after the first charged once (100 Wh: 850)
        assert ts == [int(START.timestamp() * 1000) + i * 1000 for i in range(count)]
        refs = db.execute(
            "SELECT reference, amount FROM ledger WHERE kind = 1 ORDER BY id"
        ).fetchall()
        positions = [int(ref.split(":")[1]) for ref, _ in refs]
        assert positions == [int(p) for p, _ in rows[1:]]
        assert all(amount == -half_up(100, PRICE) for _, amount in refs)
        assert db.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()[0] == -(
            850 * (count - 1)
        )
        assert check_balances(db) == []
    finally:
        db.conn.close()


def test_no_tariff_in_force_stores_the_reading_uncharged(charged) -> None:  # type: ignore[no-untyped-def]
    post, store = charged
    # START - 200 days is before the tariff's first version (2024-01-01 +08:00)
    assert post("m1", -200 * 86_400, 0) == 0
    assert post("m1", -200 * 86_400 + 60, 1_000) == 0  # not rated, but stored
    assert post("m1", 0, 2_000) == 0  # the interval starts before the tariff: not rated
    assert post("m1", 60, 3_000) == PRICE
    n = store.writer.call(lambda db: db.execute("SELECT count(*) FROM readings").fetchone()[0])
    assert n.result(10) == 4
