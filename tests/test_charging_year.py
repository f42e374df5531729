"""Charging details worked by hand: DL/T 645 per-tariff registers as slot energies, the
vacancy account, the yearly tier reset (also across a restart) and tier thresholds
prorated for an account opened mid-year.  Real SQLite; readings as the poller gives them
(energy x CT x PT)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.billing import TariffBook
from gateway.charging import Charger
from gateway.config import GatewayConfig, parse_config
from gateway.protocols.quantities import Quantity, Reading
from gateway.settlement import yearly_record
from gateway.store import Store
from gateway.store.ledger import sync_accounts

SHANGHAI = ZoneInfo("Asia/Shanghai")
VALLEY, PEAK = 2979, 10853  # 0.2979 and 1.0853 yuan/kWh

TARIFFS = f"""
tariffs:
  - {{id: flat, version: 1, effective: "2020-01-01T00:00:00+08:00", kind: flat, price: 8500}}
  - id: tou
    version: 1
    effective: "2020-01-01T00:00:00+08:00"
    kind: tou
    slots: [{{start: "00:00", slot: 4}}, {{start: "08:00", slot: 2}}, {{start: "20:00", slot: 4}}]
    prices: {{1: 1, 2: {PEAK}, 3: 1, 4: {VALLEY}}}
  - {{id: tiered, version: 1, effective: "2020-01-01T00:00:00+08:00", kind: tiered,
      thresholds: [36600], prices: [5000, 10000]}}
"""


def config(accounts: str, meters: str, billing: str = "") -> GatewayConfig:
    text = (
        "gateway_id: gw\nserial_buses:\n  - {name: dl, port: /dev/null, protocol: dlt645}\n"
        f"meters:\n{meters}accounts:\n{accounts}{TARIFFS}{billing}uplink: {{host: localhost}}\n"
    )
    return parse_config(text, "gw.yaml")


def meter(n: int, account: str | None = None, extra: str = "") -> str:
    acc = f", account: {account}" if account else ""
    return f'  - {{id: m{n}, bus: dl, address: "00000000000{n}"{acc}{extra}}}\n'


def ms(*args: int) -> int:
    """Local (Shanghai) wall time -> UTC ms."""
    return int(datetime(*args, tzinfo=SHANGHAI).timestamp() * 1000)  # type: ignore[misc]


def energy(
    m: str, ts_ms: int, wh: int, tariffs: tuple[int, int, int, int] | None = None
) -> Reading:
    values = {Quantity.ENERGY_IMPORT: wh}
    if tariffs is not None:
        for q, v in zip(
            (Quantity.ENERGY_T1, Quantity.ENERGY_T2, Quantity.ENERGY_T3, Quantity.ENERGY_T4),
            tariffs,
            strict=True,
        ):
            values[q] = v
    return Reading(m, ts_ms, values)


@contextmanager
def charger(path: Path, cfg: GatewayConfig) -> Iterator[Charger]:
    store = Store.open(path, gateway_id="gw", max_delay=0.01)
    try:
        day = datetime(2024, 1, 1).date()
        store.writer.call(
            lambda db: sync_accounts(db, cfg.accounts, opened_day=day, opened_ms=0), durable=True
        ).result(10)
        c = Charger(store.writer, cfg)
        try:
            yield c
            assert c.wait_idle(10) and c.lost == 0
        finally:
            c.close()
    finally:
        store.close()


def balances(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {str(a): int(b) for a, b in conn.execute("SELECT id, balance FROM accounts")}
    finally:
        conn.close()


def test_per_tariff_registers_give_the_slot_energies(tmp_path: Path) -> None:
    cfg = config("  - {id: A, type: postpaid, tariff: tou}\n", meter(1, "A") + meter(2, "A"))
    with charger(tmp_path / "gw.db", cfg) as c:
        # 07:00 -> 09:00 local crosses 08:00 (valley -> peak); 2000 Wh in total
        # m1 keeps tariff registers: T4 (valley) +1500, T2 (peak) +500
        c.submit(energy("m1", ms(2024, 6, 3, 7), 10_000, (0, 3_000, 0, 7_000)))
        c.submit(energy("m1", ms(2024, 6, 3, 9), 12_000, (0, 3_500, 0, 8_500)))
        assert c.wait_idle(10)
        # by registers: valley 1500 Wh x 0.2979 = 446.85 -> 4468.5 -> 4469 (half up),
        #               peak 500 Wh x 1.0853 = 5426.5 -> 5427;  4469 + 5427 = 9896
        assert c.balance("A") == -9_896
        # m2 has no registers: apportioned by time, 1000 Wh each side of 08:00:
        #   1000 x 2979 / 1000 = 2979, 1000 x 10853 / 1000 = 10853;  13832
        c.submit(energy("m2", ms(2024, 6, 3, 7), 10_000))
        c.submit(energy("m2", ms(2024, 6, 3, 9), 12_000))
        assert c.wait_idle(10)
        assert c.balance("A") == -9_896 - 13_832
        # registers that disagree with the total (by more than 4 x 10 Wh) are not trusted:
        # 09:00 -> 10:00 all peak anyway; m1 +1000 Wh total, registers say +100 Wh
        c.submit(energy("m1", ms(2024, 6, 3, 10), 13_000, (0, 3_600, 0, 8_500)))
        assert c.wait_idle(10)
        # peak segment cumulative 500 + 1000 = 1500 Wh -> 16279.5 -> 16280; 16280 - 5427
        assert c.balance("A") == -9_896 - 13_832 - (16_280 - 5_427)
    assert balances(tmp_path / "gw.db")["A"] == -9_896 - 13_832 - 10_853


def test_vacancy_tariff_charges_unassigned_meters(tmp_path: Path) -> None:
    accounts = "  - {id: A, type: prepaid, tariff: flat}\n"
    meters = meter(1, "A") + meter(2) + meter(3, extra=", role: gate, area: T1")
    off = config(accounts, meters)
    with charger(tmp_path / "off.db", off) as c:
        assert c.account_of("m2") is None and "m2" not in c.billing
        c.submit(energy("m2", ms(2024, 6, 3, 7), 0))
        c.submit(energy("m2", ms(2024, 6, 3, 8), 1_000))
    assert balances(tmp_path / "off.db")["vacancy"] == 0  # no vacancy tariff: not charged
    on = config(accounts, meters, "billing: {vacancy_tariff: flat}\n")
    with charger(tmp_path / "on.db", on) as c:
        assert c.account_of("m2") == "vacancy" and c.meters_of("vacancy") == ("m2",)
        assert c.account_of("m3") is None  # a gate meter is never billed
        for m in ("m2", "m3"):
            c.submit(energy(m, ms(2024, 6, 3, 7), 0))
            c.submit(energy(m, ms(2024, 6, 3, 8), 1_000))
        assert c.wait_idle(10)
        assert c.balance("vacancy") == -8_500  # 1 kWh x 0.85 yuan
    assert balances(tmp_path / "on.db")["vacancy"] == -8_500


def tiered_account(opened: str = "") -> str:
    return f"  - {{id: A, type: postpaid, tariff: tiered{opened}}}\n"


def test_the_tier_total_resets_at_the_year_start_also_across_a_restart(tmp_path: Path) -> None:
    cfg = config(tiered_account(), meter(1, "A"))
    path = tmp_path / "gw.db"
    with charger(path, cfg) as c:
        c.submit(energy("m1", ms(2024, 12, 31, 12), 0))
        c.submit(energy("m1", ms(2024, 12, 31, 20), 36_000))
        assert c.wait_idle(10)
        # 36000 Wh in tier 1 (threshold 36600): 36000 x 0.5 yuan = 180000
        assert c.balance("A") == -180_000
    conn = sqlite3.connect(path)
    try:
        year, end = conn.execute("SELECT year_wh, year_end_ms FROM rating_year").fetchone()
    finally:
        conn.close()
    assert (year, end) == (36_000, ms(2025, 1, 1))
    with charger(path, cfg) as c:  # restarted before the new year
        # 20:00 -> 04:00 crosses the year start at its middle: 1200 Wh by time, 600 each side
        #   before: year 36000 + 600 = 36600: all still tier 1 -> 600 x 0.5 = 3000
        #   after:  the total restarts at 0: tier 1 again -> 600 x 0.5 = 3000
        c.submit(energy("m1", ms(2025, 1, 1, 4), 37_200))
        assert c.wait_idle(10)
        assert c.balance("A") == -180_000 - 6_000
        # without the reset the second 600 Wh would have been tier 2 (600 x 1.0 = 6000)
        c.submit(energy("m1", ms(2025, 1, 1, 5), 37_200 + 36_000))
        # year 600 + 36000 = 36600: exactly the threshold, all tier 1: 36000 x 0.5
        assert c.wait_idle(10)
        assert c.balance("A") == -180_000 - 6_000 - 180_000
    conn = sqlite3.connect(path)
    try:
        year, end = conn.execute("SELECT year_wh, year_end_ms FROM rating_year").fetchone()
    finally:
        conn.close()
    assert (year, end) == (36_600, ms(2026, 1, 1))
    # the closed year's total was kept at the reset: 36000 + the 600 Wh before it
    store = Store.open(path, gateway_id="gw")
    try:
        closed = store.writer.call(
            lambda db: db.execute("SELECT closed_wh, closed_end_ms FROM rating_year").fetchone()
        ).result(10)
        assert tuple(closed) == (36_600, ms(2025, 1, 1))
        book = TariffBook.from_config(cfg)
        taken = store.writer.call(
            lambda db: yearly_record(db, 2025, ms(2025, 1, 2), config=cfg, book=book)
        ).result(10)
        assert {s.account: s.year_wh for s in taken}["A"] == 36_600
    finally:
        store.close()


def test_tier_thresholds_are_prorated_for_an_account_opened_mid_year(tmp_path: Path) -> None:
    # opened 2024-07-01: 184 of the 366 days of 2024 are left; 36600 x 184 / 366 = 18400 Wh
    for prorate, expected in ((True, 108_000), (False, 100_000)):
        cfg = config(
            tiered_account(", opened: 2024-07-01"),
            meter(1, "A"),
            f"billing: {{prorate_tiers: {str(prorate).lower()}}}\n",
        )
        with charger(tmp_path / f"{prorate}.db", cfg) as c:
            c.submit(energy("m1", ms(2024, 8, 1), 0))
            c.submit(energy("m1", ms(2024, 8, 2), 20_000))
            assert c.wait_idle(10)
            # prorated: 18400 Wh x 0.5 = 92000 + 1600 Wh x 1.0 = 16000 -> 108000
            # not:      20000 Wh x 0.5 = 100000
            assert c.balance("A") == -expected
    # billing year starting 04-01: the account opened 2024-07-01 has 274 of 365 days
    # (2024-04-01 .. 2025-04-01) left: 36600 x 274 / 365 = 27475.07 -> 27475 Wh
    cfg = config(
        tiered_account(", opened: 2024-07-01"), meter(1, "A"), 'billing: {year_start: "04-01"}\n'
    )
    with charger(tmp_path / "april.db", cfg) as c:
        c.submit(energy("m1", ms(2024, 8, 1), 0))
        c.submit(energy("m1", ms(2024, 8, 2), 30_000))
        assert c.wait_idle(10)
        # 27475 x 0.5 = 137375 + 2525 x 1.0 = 25250 -> 162625
        assert c.balance("A") == -162_625


def test_an_untrusted_clock_far_off_loses_nothing_and_resets_nothing(tmp_path: Path) -> None:
    from gateway.protocols.quantities import FLAG_TIME_UNTRUSTED

    cfg = config(tiered_account(), meter(1, "A"))
    with charger(tmp_path / "gw.db", cfg) as c:
        c.submit(energy("m1", ms(2024, 12, 31, 12), 0))
        c.submit(energy("m1", ms(2024, 12, 31, 13), 30_000))  # 30000 Wh x 5 = 150000
        # a reboot without a clock: readings stamped 1970, then 2040 (the poller flags them)
        for ts, wh in ((0, 31_000), (60_000, 32_000), (ms(2040, 1, 1), 36_000)):
            r = energy("m1", ts, wh)
            c.submit(Reading(r.meter, r.ts_ms, r.values, FLAG_TIME_UNTRUSTED))
        assert c.wait_idle(10)
        # all 6000 Wh rated at the last trusted time (13:00 on 31 Dec): year 36000, tier 1
        # (before, the 1970 stamps fell before the tariff and the energy went uncharged)
        assert c.balance("A") == -180_000
        # trusted again, still on 31 Dec: 600 Wh more reaches the threshold exactly
        c.submit(energy("m1", ms(2024, 12, 31, 14), 36_600))
        assert c.wait_idle(10)
        assert c.balance("A") == -183_000
        # and the year resets at its real end, not at 1971 or 2041
        c.submit(energy("m1", ms(2025, 1, 1, 14), 36_600 + 1_000))
        # 14:00 -> 14:00 next day, 1000 Wh by time: 10 h (417 Wh) before 00:00 in tier 2
        # (417 Wh x 10000 / 1000 = 4170), 14 h (583 Wh) after it in tier 1 again
        # (583 Wh x 5000 / 1000 = 2915)
        assert c.wait_idle(10)
        assert c.balance("A") == -183_000 - 4_170 - 2_915
