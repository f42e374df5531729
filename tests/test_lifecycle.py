"""Meter lifecycle (gateway.lifecycle): removal, replacement, CT change, dead meters, a
meter number changed without a work order; the meter records of store migration 7."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lifecycle_bench import Bench, config_yaml, count, ms, reading
from lifecycle_bench import bench as bench  # the fixture
from polling import START
from sqlite_utils import Database

from gateway.billing import TariffBook
from gateway.charging import load_state, post_reading
from gateway.cli import main
from gateway.config import GatewayConfig, parse_config
from gateway.errors import LifecycleRefused, StoreError
from gateway.lifecycle import (
    DeadMeterResult,
    RemovalResult,
    add_meter,
    billing_of,
    change_ct,
    confirm_meter,
    remove_meter,
    replace_meter,
    settle_dead_meter,
)
from gateway.protocols.quantities import FLAG_DISCONTINUITY
from gateway.store.ledger import balance_of, check_balances, journal_with_charges, sync_accounts
from gateway.store.meters import (
    MeterRecord,
    chargeable,
    hold,
    meter_records,
    record_of,
    set_record,
)
from gateway.store.migrations import JOURNAL

T0 = 1_717_200_000_000


def test_migration_7_meter_records_and_settlements() -> None:
    db = Database(memory=True)
    JOURNAL.apply(db, T0)
    assert chargeable(db, "m1") and record_of(db, "m1") is None
    set_record(db, MeterRecord("m1", "A", "held", 60, T0, reason="number changed"))
    assert not chargeable(db, "m1")
    set_record(db, MeterRecord("m1", "A", "active", 60, T0 + 1))
    assert chargeable(db, "m1")
    assert meter_records(db) == [MeterRecord("m1", "A", "active", 60, T0 + 1)]
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO meter_records (meter, status, since_ms) VALUES ('x', 'gone', 0)")
    with pytest.raises(StoreError):
        set_record(db, MeterRecord("m2", "A", "active", 0, T0))
    row = ("monthly", "2026-12", "A", T0, T0, 0, 0, b"\xa0")
    sql = (
        "INSERT INTO settlements (kind, period, account, at_ms, taken_ms, balance, ledger_id,"
        " meters) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    db.execute(sql, row)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(sql, row)


# --- the operations, on a real store ---------------------------------------------------


def remove(bench: Bench, meter: str, seconds: int, wh: int, **kw: Any) -> RemovalResult:
    final = reading(meter, seconds, wh)
    options: dict[str, Any] = {"refund": False, "reason": "moved out", "ts_ms": ms(seconds)}
    options.update(kw)
    return bench.run(
        lambda db: remove_meter(
            db, meter, final, billing=bench.billing(meter), book=bench.book, **options
        )
    )


def test_refused_operations_write_nothing(bench: Bench) -> None:
    bench.post("m1", 0, 0)
    before = [count(bench, t) for t in ("readings", "events", "ledger", "lifecycle_ops")]
    with pytest.raises(LifecycleRefused, match="reason"):
        remove(bench, "m1", 60, 1_000, reason=" ")
    with pytest.raises(LifecycleRefused, match="billing of m2"):
        bench.run(
            lambda db: remove_meter(
                db,
                "m1",
                reading("m1", 60, 1_000),
                billing=bench.billing("m2"),
                book=bench.book,
                refund=False,
                reason="x",
                ts_ms=ms(60),
            )
        )
    with pytest.raises(LifecycleRefused, match="needs a final reading"):
        bench.run(
            lambda db: replace_meter(
                db,
                "m1",
                None,
                "m9",
                reading("m9", 60, 0),
                billing=bench.billing("m1"),
                book=bench.book,
                reason="x",
                ts_ms=ms(60),
            )
        )
    with pytest.raises(LifecycleRefused, match="positive integer"):
        bench.run(
            lambda db: change_ct(
                db,
                "m1",
                reading("m1", 60, 1_000),
                reading("m1", 60, 1_000),
                billing=bench.billing("m1"),
                new_ratio=0,
                book=bench.book,
                reason="x",
                ts_ms=ms(60),
            )
        )
    after = [count(bench, t) for t in ("readings", "events", "ledger", "lifecycle_ops")]
    assert after == before
    # a removed meter cannot be removed again, nor a reference repeated
    remove(bench, "m1", 60, 1_000, reference="wo-1")
    with pytest.raises(LifecycleRefused, match="m1 is removed"):
        remove(bench, "m1", 120, 2_000)
    with pytest.raises(LifecycleRefused, match="wo-1 was already done"):
        remove(bench, "m2", 120, 0, reference="wo-1")


def test_removal_without_refund_and_with_arrears(bench: Bench) -> None:
    bench.top_up("A", 100_000, "t-1")  # 10 yuan
    bench.post("m1", 0, 0)
    bench.post("m2", 0, 0)
    # m1 final 2 kWh: 2 x 8500 = 17_000; no refund asked: the balance stays for m2
    done = remove(bench, "m1", 60, 2_000)
    assert (done.charged, done.refunded, done.balance) == (17_000, 0, 83_000)
    # m2 final 20 kWh: 170_000 -> balance -87_000: arrears are not refunded, they stay
    done = remove(bench, "m2", 60, 20_000, refund=True)
    assert (done.charged, done.refunded, done.balance) == (170_000, 0, -87_000)
    assert bench.balance("A") == -87_000


def test_the_charger_stops_charging_a_removed_or_replaced_meter(bench: Bench) -> None:
    bench.post("m1", 0, 0)
    remove(bench, "m1", 60, 1_000)
    assert "m1" in bench.charger.billing
    bench.charger.reload()
    assert "m1" not in bench.charger.billing and "m2" in bench.charger.billing


def test_dead_meter_manual_final_reading(bench: Bench) -> None:
    bench.post("d1", 0, 40_000)

    def settle(final_wh: int, seconds: int = 7_200) -> DeadMeterResult:
        return bench.run(
            lambda db: settle_dead_meter(
                db,
                "d1",
                final_wh=final_wh,
                estimated_wh=None,
                approved_by="supervisor Wang",
                reason="read off the display in the lab",
                billing=bench.billing("d1"),
                book=bench.book,
                ts_ms=ms(seconds),
            )
        )

    with pytest.raises(LifecycleRefused, match="below the last"):
        settle(39_990)
    with pytest.raises(LifecycleRefused, match="read after"):
        settle(41_000, -60)
    done = settle(41_230)  # 1.23 kWh x 0.85 = 10_455
    assert (done.energy_wh, done.estimated, done.charged) == (1_230, False, 10_455)
    assert bench.run(lambda db: record_of(db, "d1")).status == "removed"  # type: ignore[union-attr]
    with pytest.raises(LifecycleRefused, match="either"):
        bench.run(
            lambda db: settle_dead_meter(
                db,
                "m1",
                final_wh=1,
                estimated_wh=1,
                approved_by="x",
                reason="x",
                billing=bench.billing("m1"),
                book=bench.book,
                ts_ms=ms(0),
            )
        )


def journal_only(bench: Bench, meter: str, seconds: int, wh: int, flags: int = 0) -> None:
    """What charging does with a held meter's reading: journal it, charge nothing."""
    r = reading(meter, seconds, wh, flags)
    bench.run(lambda db: journal_with_charges(db, r, ()))


@pytest.mark.parametrize("charge_held", [True, False])
def test_a_held_meter_is_charged_only_after_confirmation(bench: Bench, charge_held: bool) -> None:
    bench.post("m1", 0, 500_000)
    assert bench.post("m1", 60, 501_000) == 8_500
    # the poller saw a new nameplate number: the meter is held; the swapped meter's
    # first reading (flagged a discontinuity) and the next are journaled, not charged
    bench.run(lambda db: hold(db, "m1", account="A", ratio=1, ts_ms=ms(90), why="number"))
    assert not bench.run(lambda db: chargeable(db, "m1"))
    journal_only(bench, "m1", 120, 7_000, FLAG_DISCONTINUITY)
    journal_only(bench, "m1", 180, 9_000)
    with pytest.raises(LifecycleRefused, match="approved"):
        bench.run(lambda db: confirm_meter(db, "m1", approved_by="", reason="ok", ts_ms=ms(200)))
    confirmed = bench.run(
        lambda db: confirm_meter(
            db,
            "m1",
            approved_by="tech-7",
            reason="meter swapped by the utility, paperwork late",
            ts_ms=ms(200),
            charge_held=charge_held,
        )
    )
    assert confirmed.status == "active" and bench.run(lambda db: chargeable(db, "m1"))
    # next reading 10 kWh: charged from 7_000 (the held stretch too) or from 9_000
    charged = bench.post("m1", 240, 10_000)
    assert charged == (3_000 if charge_held else 1_000) * 8500 // 1000
    assert bench.balance("A") == -(8_500 + charged)


def test_cli_removes_a_meter_with_a_refund(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, cfg = tmp_path / "gw.db", tmp_path / "gw.yaml"
    cfg.write_text(config_yaml())
    bench = Bench(path)
    bench.top_up("A", 200_000, "t-1")
    bench.post("m1", 0, 1_000_000)
    bench.close()
    at = (START + timedelta(hours=1)).isoformat()
    base = ["meter", "remove", "--config", str(cfg), "--store", str(path), "m1"]
    args = [*base, "--final-kwh", "1010.5", "--reason", "shop closed", "--refund", "--at", at]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.split(": ", 1)[1])
    # 10.5 kWh x 0.85 = 89_250; 200_000 - 89_250 = 110_750 paid back
    assert (out["final_wh"], out["charged"], out["refunded"], out["balance"]) == (
        1_010_500,
        89_250,
        110_750,
        0,
    )
    assert main([*base, "--final-kwh", "1011", "--reason", "again", "--at", at]) == 2
    assert "m1 is removed" in capsys.readouterr().err
    assert main([*base, "--final-kwh", "10.0001", "--reason", "x"]) == 2
    assert "at most 3 decimals" in capsys.readouterr().err
    assert main(["meter", "list", "--config", str(cfg), "--store", str(path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(r["meter"], r["status"]) for r in listed] == [("m1", "removed")]


def test_a_new_meter_at_the_same_position_keeps_its_id(bench: Bench) -> None:
    # m1 is a site label: the meter there is swapped; its old register's final is
    # charged, the new meter's register is the baseline, the accumulator goes on.
    bench.post("m1", 0, 0)
    assert bench.post("m1", 60, 1_001) == 8_509  # 1001 Wh x 8500 / 1000 = 8508.5 -> 8509
    done = bench.run(
        lambda db: replace_meter(
            db,
            "m1",
            reading("m1", 120, 1_002),  # cumulative 1002 Wh -> 8517: 8 more
            "m1",
            reading("m1", 130, 77_000),
            billing=bench.billing("m1"),
            book=bench.book,
            reason="meter swapped at shop A101",
            ts_ms=ms(130),
        )
    )
    assert (done.old, done.new, done.charged) == ("m1", "m1", 8)
    # +1001 Wh on the new meter: cumulative 2003 Wh -> 17_025.5 -> 17_026; - 8_517 = 8_509
    assert bench.post("m1", 190, 78_001) == 8_509
    assert bench.run(lambda db: record_of(db, "m1")) == MeterRecord(
        "m1", "A", "active", 1, ms(130), reason="meter swapped at shop A101"
    )


def test_billing_of_matches_the_charger_and_keeps_held_meters(bench: Bench) -> None:
    for meter, billing in bench.charger.billing.items():
        assert billing_of(bench.config, meter, None) == billing
    held = MeterRecord("c1", "A", "held", 10, ms(0))
    assert billing_of(bench.config, "c1", held) == bench.billing("c1", ratio=10)
    assert billing_of(bench.config, "nowhere", None) is None


def test_cli_ct_change_and_dead_meter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, cfg = tmp_path / "gw.db", tmp_path / "gw.yaml"
    cfg.write_text(config_yaml())
    bench = Bench(path)
    bench.post("c1", 0, 24_691_200)  # 1234.56 kWh x 20 (100/5 A)
    bench.post("d1", 0, 50_000)
    bench.close()
    at = (START + timedelta(hours=1)).isoformat()
    common = ["--config", str(cfg), "--store", str(path), "--at", at, "--json"]
    ct = ["meter", "ct", *common, "c1", "--final-kwh", "1240", "--new-ct", "50/5"]
    assert main([*ct, "--reason", "CT 100/5 -> 50/5"]) == 0
    out = json.loads(capsys.readouterr().out)
    # (1240.00 - 1234.56) kWh x 20 = 108.8 kWh x 0.85 = 924_800; baseline 1240 kWh x 10
    assert (out["charged"], out["new"], out["carried"]) == (924_800, "c1", 1)
    dead = ["meter", "dead", *common, "d1", "--estimate-kwh", "12.5", "--approved-by", "Li"]
    assert main([*dead, "--reason", "display dead"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["energy_wh"], out["estimated"], out["charged"]) == (12_500, True, 106_250)
    assert (
        main(["meter", "ct", *common, "c1", "--final-kwh", "1", "--new-ct", "7/5", "--reason", "x"])
        == 2
    )
    assert "not a whole ratio" in capsys.readouterr().err
    reader = Bench(path)
    try:
        assert reader.run(lambda db: record_of(db, "c1")).ratio == 10  # type: ignore[union-attr]
        state = reader.run(lambda db: load_state(db, "c1"))
        assert state is not None and state.last_energy_wh == 12_400_000
        assert reader.balance("A") == -(924_800 + 106_250)
        assert reader.run(check_balances) == []
    finally:
        reader.close()


def test_a_replacement_already_polled_is_not_charged_twice(bench: Bench) -> None:
    # the configuration billed m2 (the new meter) before the work order was entered: its
    # newer reading stays the baseline; m1's accumulator is added to m2's
    bench.post("m1", 0, 0)
    assert bench.post("m1", 60, 1_001) == 8_509  # 8508.5 -> 8509
    bench.post("m2", 100, 5_000)
    assert bench.post("m2", 200, 6_000) == 8_500  # m2's own: 1000 Wh -> 8500
    done = bench.run(
        lambda db: replace_meter(
            db,
            "m1",
            reading("m1", 90, 1_001),
            "m2",
            reading("m2", 100, 5_000),  # entered late: dated before m2's last reading
            billing=bench.billing("m1"),
            book=bench.book,
            reason="paperwork late",
            ts_ms=ms(300),
        )
    )
    assert done.charged == 0
    # +1 kWh on m2 from 6_000: accumulators summed (2001 Wh, 17_009 posted):
    # 3001 Wh x 8500 / 1000 = 25_508.5 -> 25_509; - 17_009 = 8_500
    assert bench.post("m2", 400, 7_000) == 8_500
    assert bench.balance("A") == -(8_509 + 8_500 + 8_500)


def test_the_charger_holds_and_resumes_with_the_records(bench: Bench) -> None:
    # the same through the running Charger: held meters are journaled, not charged; after
    # the confirmation and a reload it charges from where the new meter showed up
    charger = bench.charger

    def submit(seconds: int, wh: int, flags: int = 0) -> None:
        charger.submit(reading("m1", seconds, wh, flags))
        assert charger.wait_idle(10)

    submit(0, 500_000)
    submit(60, 501_000)
    assert charger.balance("A") == -8_500
    bench.run(lambda db: hold(db, "m1", account="A", ratio=1, ts_ms=ms(90), why="number"))
    charger.reload()
    submit(120, 7_000, FLAG_DISCONTINUITY)
    submit(180, 9_000)
    assert charger.balance("A") == -8_500 == bench.balance("A")
    bench.run(lambda db: confirm_meter(db, "m1", approved_by="tech-7", reason="ok", ts_ms=ms(200)))
    charger.reload()
    submit(240, 10_000)  # 3 kWh since the new meter's first reading: 25_500
    assert charger.balance("A") == -34_000 == bench.balance("A")


def test_a_removed_meter_added_to_another_account(bench: Bench) -> None:
    bench.post("m2", 0, 0)
    assert bench.post("m2", 60, 1_001) == 8_509  # account A
    remove(bench, "m2", 120, 1_001)

    def add(account: str, seconds: int, wh: int) -> MeterRecord:
        billing = bench.billing("m2", account=account, tariff="res")
        start = reading("m2", seconds, wh)
        return bench.run(
            lambda db: add_meter(
                db, "m2", start, billing=billing, reason="new tenant", ts_ms=ms(seconds)
            )
        )

    assert add("R", 600, 5_000) == MeterRecord("m2", "R", "active", 1, ms(600), reason="new tenant")
    with pytest.raises(LifecycleRefused, match="in service"):
        add("R", 700, 6_000)
    # charged to R (tiered, first tier 0.5283) from the start reading, afresh:
    # 1001 Wh x 5283 / 1000 = 5288.283 -> 5288
    billing = bench.billing("m2", account="R", tariff="res")
    assert bench.post("m2", 900, 6_001, billing=billing) == 5_288
    assert bench.balance("R") == -5_288 and bench.balance("A") == -8_509


def test_cli_adds_a_meter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, cfg = tmp_path / "gw.db", tmp_path / "gw.yaml"
    cfg.write_text(config_yaml())
    Bench(path).close()
    at = START.isoformat()
    add = ["meter", "add", "--config", str(cfg), "--store", str(path), "--at", at, "--json"]
    assert main([*add, "m1", "--initial-kwh", "12.34", "--ratio", "60", "--reason", "new"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["meter"], out["account"], out["ratio"], out["status"]) == ("m1", "A", 60, "active")
    bench = Bench(path)
    try:
        state = bench.run(lambda db: load_state(db, "m1"))
        assert state is not None and state.last_energy_wh == 12_340 * 60
    finally:
        bench.close()
    assert main([*add, "m1", "--initial-kwh", "13", "--reason", "again"]) == 2
    assert "in service" in capsys.readouterr().err


# --- property: a replacement changes nothing in what the account pays ---------------------


def fresh_db(bench_config: GatewayConfig) -> Database:
    db = Database(memory=True)
    JOURNAL.apply(db, T0)
    sync_accounts(db, bench_config.accounts, opened_day=START.date(), opened_ms=0)
    return db


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 1_500_000), min_size=2, max_size=8),
    st.integers(0, 7),
    st.integers(0, 10**9),
)
def test_a_replacement_costs_what_one_meter_would(deltas: list[int], k: int, start: int) -> None:
    # one tiered meter measuring everything, or r1 replaced by r2 after reading k: the
    # account pays the same to the unit and its year total is the same
    config = parse_config(config_yaml(), "gw.yaml")
    book, r1 = TariffBook.from_config(config), billing_of(config, "r1", None)
    assert r1 is not None
    r2 = replace(r1, meter="r2")
    k = k % len(deltas)
    one, two = fresh_db(config), fresh_db(config)
    post_reading(one, reading("r1", 0, 0), r1, book)
    post_reading(two, reading("r1", 0, 0), r1, book)
    total = 0
    for i, delta in enumerate(deltas, 1):
        total += delta
        post_reading(one, reading("r1", 3600 * i, total), r1, book)
        if i <= k:
            post_reading(two, reading("r1", 3600 * i, total), r1, book)
    swap = 3600 * k + 60
    replace_meter(
        two,
        "r1",
        reading("r1", swap, sum(deltas[:k])),
        "r2",
        reading("r2", swap, start),
        billing=r1,
        book=book,
        reason="swap",
        ts_ms=ms(swap),
    )
    on_new = start
    for i, delta in enumerate(deltas[k:], k + 1):
        on_new += delta
        post_reading(two, reading("r2", 3600 * i, on_new), r2, book)
    assert balance_of(one, "R") == balance_of(two, "R")
    year = "SELECT year_wh FROM rating_year WHERE account = 'R'"
    assert one.execute(year).fetchone() == two.execute(year).fetchone() == (total,)
    assert check_balances(one) == check_balances(two) == []
