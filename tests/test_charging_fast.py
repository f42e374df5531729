"""The Charger rates on the fast path (gateway.charging.fast): a simulated day of
readings goes through a Charger on the compiled engine, one on the pure twin, and the
store-only path of the Python reference (``post_reading``, i.e. ``rate_reading``); the
three ledgers are equal row by row, and so are the balances, the meters' rating state
and the accounts' tier totals.

The day: six DL/T 645 meters under the simulator's physics (daily load curves, the
meter's own per-tariff registers), readings every 10 minutes from 00:00 local: flat,
time of use (with the registers), tiered (crossing a tier on the day; a new version at
12:05, which the kernel hands back to Python), an unbilled and a postpaid account, a
register rollover, a discontinuity, an untrusted clock for an hour and a top-up."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from types import ModuleType

import cbor2
import pytest

from gateway.charging import Charger, post_reading
from gateway.charging.state import read_snapshot
from gateway.config import GatewayConfig, parse_config
from gateway.fastpath import _engine_py
from gateway.fastpath import load as load_engine
from gateway.poller import REGISTER_RANGE_WH
from gateway.protocols.quantities import (
    FLAG_DISCONTINUITY,
    FLAG_ROLLOVER,
    FLAG_TIME_UNTRUSTED,
    Quantity,
    Reading,
)
from gateway.sim.physics import DailyCurveLoad, MeterPhysics
from gateway.store import Store
from gateway.store.ledger import EntryKind, Ledger, TopUp, sync_accounts

DAY = datetime(2024, 6, 1, 0, 0, tzinfo=UTC) - timedelta(hours=8)  # 00:00 in Shanghai
STEP = timedelta(minutes=10)
SLOTS = ((time(0, 0), 4), (time(8, 0), 2), (time(11, 0), 1), (time(13, 0), 3), (time(22, 0), 4))

CONFIG = """
gateway_id: gw
serial_buses:
  - {name: dl, port: /dev/null, protocol: dlt645}
meters:
  - {id: f1, bus: dl, address: "000000000001", ct_ratio: 60, account: F}
  - {id: f2, bus: dl, address: "000000000002", account: F}
  - {id: t1, bus: dl, address: "000000000003", ct_ratio: 10, account: T}
  - {id: s1, bus: dl, address: "000000000004", ct_ratio: 10, account: S}
  - {id: u1, bus: dl, address: "000000000005", account: U}
  - {id: p1, bus: dl, address: "000000000006", account: P}
accounts:
  - {id: F, type: prepaid, tariff: flat}
  - {id: T, type: prepaid, tariff: tou}
  - {id: S, type: prepaid, tariff: tiers, opened: "2024-03-01"}
  - {id: U, type: unbilled, tariff: flat}
  - {id: P, type: postpaid, tariff: tou}
tariffs:
  - {id: flat, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat, price: 6793}
  - id: tou
    version: 1
    effective: "2024-01-01T00:00:00+08:00"
    kind: tou
    slots: [{start: "00:00", slot: 4}, {start: "08:00", slot: 2}, {start: "11:00", slot: 1},
            {start: "13:00", slot: 3}, {start: "22:00", slot: 4}]
    prices: {1: 13587, 2: 10191, 3: 6793, 4: 2979}
  - {id: tiers, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: tiered,
     thresholds: [400000, 700000], prices: [5283, 5783, 8283]}
  - {id: tiers, version: 2, effective: "2024-06-01T12:05:00+08:00", kind: tiered,
     thresholds: [400000, 700000], prices: [5383, 5883, 8383]}
uplink: {host: localhost}
"""

# meter: (CT ratio, start register Wh, daily curve (minute, W) points)
METERS = {
    "f1": (60, 123_450, ((0, 300), (480, 1_800), (1_200, 900))),
    "f2": (1, REGISTER_RANGE_WH - 20_000, ((0, 2_000), (720, 4_500))),  # wraps in the day
    "t1": (10, 50_000, ((0, 800), (600, 6_000), (1_080, 2_500))),
    "s1": (10, 10_000, ((0, 1_500), (720, 2_500))),  # crosses its tier on the day
    "u1": (1, 7_000, ((0, 500),)),
    "p1": (1, 90_000, ((0, 1_200), (900, 3_300))),
}


def day_of_readings() -> list[Reading]:
    """The day as the poller hands it over: register (whole 10 Wh) x CT; a rollover and
    a discontinuity flagged; an hour of untrusted time on two meters."""
    physics = {
        m: MeterPhysics(
            meter_number=m,
            load=DailyCurveLoad(points),
            now=DAY,
            energy_import_wh=start,
            tou_slots=SLOTS,
            register_wrap_wh=REGISTER_RANGE_WH,
        )
        for m, (_, start, points) in METERS.items()
    }
    out: list[Reading] = []
    last: dict[str, int] = {}
    for step in range(24 * 6 + 1):
        now = DAY + step * STEP
        for m, meter in physics.items():
            meter.advance(now)
            ct = METERS[m][0]
            energy = meter.energy_import_wh // 10 * 10 * ct
            values = {Quantity.ENERGY_IMPORT: energy}
            if m in ("t1", "p1"):
                regs = [wh // 10 * 10 * ct for wh in meter.tariff_wh]
                values.update(zip(
                    (Quantity.ENERGY_T1, Quantity.ENERGY_T2, Quantity.ENERGY_T3,
                     Quantity.ENERGY_T4), regs, strict=True,
                ))  # fmt: skip
            flags = 0
            if m in last and energy < last[m]:
                flags |= FLAG_ROLLOVER
            if m == "f1" and step == 70:
                flags |= FLAG_DISCONTINUITY
            if m in ("t1", "s1") and 50 <= step < 56:
                flags |= FLAG_TIME_UNTRUSTED
            last[m] = energy
            ts = int(now.timestamp() * 1000) + (7_000 if flags & FLAG_TIME_UNTRUSTED else 0)
            out.append(Reading(m, ts, values, flags))
    assert any(r.flags & FLAG_ROLLOVER for r in out)
    return out


def config() -> GatewayConfig:
    return parse_config(CONFIG, "gw.yaml")


def open_store(path: Path, cfg: GatewayConfig) -> Store:
    store = Store.open(path, gateway_id="gw", max_delay=0.01)
    store.writer.call(
        lambda db: sync_accounts(db, cfg.accounts, opened_day=DAY.date(), opened_ms=0),
        durable=True,
    ).result(10)
    for account in ("F", "T", "S"):  # funded: the day does not trip them
        fund = TopUp(f"fund-{account}", account, EntryKind.TOP_UP, 50_000_000, 0)
        assert Ledger(store).top_up(fund).result(10).applied
    return store


TOP_UP_AT = 90  # index into the readings: a top-up of F arrives then
TOP_UP = TopUp("mid-day", "F", EntryKind.TOP_UP, 123_456, int((DAY + 10 * STEP).timestamp() * 1000))


def run_charger(path: Path, engine: ModuleType, readings: list[Reading]) -> Charger:
    cfg = config()
    store = open_store(path, cfg)
    charger = Charger(store.writer, cfg, engine=engine)
    try:
        feed(charger, readings, 0, len(readings))
    finally:
        charger.close()
        store.close()
    return charger


def feed(charger: Charger, readings: list[Reading], start: int, stop: int) -> None:
    """Submit ``readings[start:stop]`` (the top-up at its place) and wait for the writes."""
    for i in range(start, stop):
        if i == TOP_UP_AT:
            assert charger.top_up(TOP_UP).result(10).applied
        charger.submit(readings[i])
    assert charger.wait_idle(30)
    assert charger.lost == 0 and charger.failed == 0


def run_reference(path: Path, readings: list[Reading]) -> None:
    """The store-only path: each reading rated by rate_reading from the stored state."""
    cfg = config()
    store = open_store(path, cfg)
    charger = Charger(store.writer, cfg)  # for its billing table and book only
    charger.close()
    try:
        for i, reading in enumerate(readings):
            if i == TOP_UP_AT:
                assert Ledger(store).top_up(TOP_UP).result(10).applied
            billing = charger.billing[reading.meter]
            store.writer.call(
                lambda db, r=reading, b=billing: post_reading(
                    db, r, b, charger.book, calendar=charger.calendar
                ),
                durable=True,
            ).result(10)
    finally:
        store.close()


def dump(path: Path) -> dict[str, object]:
    conn = sqlite3.connect(path)
    try:
        ledger = conn.execute(
            "SELECT id, account, kind, amount, ts_ms, reference, tariff_version, meter"
            " FROM ledger ORDER BY id"
        ).fetchall()
        balances = conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall()
        years = conn.execute(
            "SELECT account, year_wh, year_end_ms FROM rating_year ORDER BY account"
        ).fetchall()
        states = {
            m: (ts, e, {tuple(k[:3]): k[3:] for k in cbor2.loads(t) if k[3] or k[4]}, slots)
            for m, ts, e, t, slots in conn.execute(
                "SELECT meter, last_ts_ms, last_energy_wh, totals, last_slots FROM rating_state"
            ).fetchall()
        }  # an accumulator still at zero changes nothing (the fast path does not list it)
    finally:
        conn.close()
    return {"ledger": ledger, "balances": balances, "years": years, "states": states}


@pytest.fixture(scope="module")
def readings() -> list[Reading]:
    return day_of_readings()


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, readings: list[Reading]
) -> Iterator[dict[str, object]]:
    path = tmp_path_factory.mktemp("reference") / "gw.db"
    run_reference(path, readings)
    yield dump(path)


def test_the_day_on_the_compiled_engine_and_on_the_twin_gives_the_same_ledger(
    tmp_path: Path, readings: list[Reading], reference: dict[str, object]
) -> None:
    compiled, kind, reason = load_engine("compiled")
    assert kind == "compiled", reason
    a = run_charger(tmp_path / "compiled.db", compiled, readings)
    b = run_charger(tmp_path / "twin.db", _engine_py, readings)
    got_a, got_b = dump(tmp_path / "compiled.db"), dump(tmp_path / "twin.db")
    ledger = got_a["ledger"]
    assert isinstance(ledger, list) and len(ledger) > 500  # the day was charged
    for row_a, row_b in zip(ledger, got_b["ledger"], strict=True):  # type: ignore[call-overload]
        assert row_a == row_b
    assert got_a == got_b
    # both went through the kernel, and some readings back to Python (the new version)
    for charger in (a, b):
        rater = charger._rating.rater
        assert rater.engine is (compiled if charger is a else _engine_py)
        assert rater.rated > len(readings) // 2 and rater.fallbacks["version_change"] > 0


def test_the_fast_path_charges_the_day_as_the_python_reference(
    tmp_path: Path, readings: list[Reading], reference: dict[str, object], engine: ModuleType
) -> None:
    run_charger(tmp_path / "gw.db", engine, readings)
    got = dump(tmp_path / "gw.db")
    ref_ledger = reference["ledger"]
    assert isinstance(ref_ledger, list)
    kinds = {row[2] for row in ref_ledger}
    assert len(kinds) >= 2  # top-ups and charges
    for row, want in zip(got["ledger"], ref_ledger, strict=True):  # type: ignore[call-overload]
        assert row == want
    assert got == reference


def test_a_restart_resumes_from_the_stored_state(tmp_path: Path, readings: list[Reading]) -> None:
    """Half the day, a restart (the rating state filled from the store's snapshot), the
    other half: the same ledger and state as one run."""
    whole = tmp_path / "whole.db"
    run_charger(whole, _engine_py, readings)
    split = tmp_path / "split.db"
    cfg = config()
    store = open_store(split, cfg)
    half = len(readings) // 2
    try:
        for start, stop in ((0, half), (half, len(readings))):
            charger = Charger(store.writer, cfg)
            feed(charger, readings, start, stop)
            charger.close()
        assert set(store.writer.call(read_snapshot).result(10).states) == set(METERS)
    finally:
        store.close()
    assert dump(split) == dump(whole)
