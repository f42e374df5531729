"""Tariff versions received by command (gateway.tariff_updates): the store table, the
checks (the configuration's own), and the late re-rating (退补) from the journal.

Money in 0.0001 yuan, energy in Wh.  A flat price of 5000 (0.5000 yuan/kWh) costs
exactly 5 per Wh and 6000 exactly 6, so every charge below is Wh x 5 or Wh x 6."""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from gateway.billing import Running
from gateway.charging import Charger, load_state
from gateway.clock import ManualClock
from gateway.config import GatewayConfig, parse_config
from gateway.config.model import FlatTariff, Tariff, TieredTariff, TouTariff
from gateway.errors import ConfigError, StoreError
from gateway.protocols.quantities import (
    FLAG_CURVE,
    FLAG_DISCONTINUITY,
    FLAG_TIME_UNTRUSTED,
    Quantity,
    Reading,
)
from gateway.store import Store
from gateway.store.db import connect
from gateway.store.ledger import (
    EntryKind,
    Ledger,
    LedgerReader,
    TopUp,
    check_balances,
    sync_accounts,
)
from gateway.tariff_updates import (
    LateRerating,
    add_version,
    finish_late,
    in_force,
    load_book,
    ms_of,
    newer_refusal,
    plan_late,
    tariff_args,
    tariff_from_args,
)
from gateway.tasks.settlement import SettlementTask

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=SH)  # the gateway's clock in these tests
H = 3_600_000  # ms
NOW_MS = ms_of(NOW)
FUND = 1_000_000  # 100 yuan each
V2 = {"id": "flat", "version": 2, "effective": NOW_MS - 2 * H, "kind": "flat", "price": 6000}

CONFIG = """\
gateway_id: gw
serial_buses: [{name: dl, port: /dev/null, protocol: dlt645}]
meters:
  - {id: a1, bus: dl, address: '000000000001', account: A}
  - {id: a2, bus: dl, address: '000000000002', account: A}
  - {id: b1, bus: dl, address: '000000000003', account: B}
accounts:
  - {id: A, type: prepaid, tariff: flat}
  - {id: B, type: prepaid, tariff: flat}
tariffs:
  - {id: flat, version: 1, effective: "2026-01-01T00:00:00+08:00", kind: flat, price: 5000}
uplink: {host: localhost}
"""


def test_the_store_has_a_tariff_versions_table(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db", gateway_id="gw") as store:
        cols = store.writer.call(
            lambda db: [r[1] for r in db.execute("PRAGMA table_info(tariff_versions)")]
        ).result()
    assert cols == [
        "tariff", "version", "effective_ms", "kind", "args", "received_ms", "adjustments"
    ]  # fmt: skip


# --- the wire form, checked by the configuration's rules ---------------------------------


def test_each_kind_round_trips_through_the_wire_form() -> None:
    tou = {
        "id": "tou",
        "version": 3,
        "effective": NOW_MS,
        "kind": "tou",
        "slots": {"00:00": 4, "08:00": 2, "22:00": 4},
        "prices": {2: 9000, 4: 3000},
    }
    t = tariff_from_args(tou)
    assert isinstance(t, TouTariff) and [s.slot for s in t.slots] == [4, 2, 4]
    assert t.effective == NOW and dict(t.prices) == {2: 9000, 4: 3000}
    tiered = {
        "id": "res",
        "version": 2,
        "effective": NOW_MS,
        "kind": "tiered",
        "thresholds": [2_760_000, 4_800_000],
        "prices": [5283, 5783, 8283],
    }
    t2 = tariff_from_args(tiered)
    assert isinstance(t2, TieredTariff) and t2.thresholds == (2_760_000, 4_800_000)
    flat = tariff_from_args(V2)
    assert flat == FlatTariff("flat", 2, NOW - timedelta(hours=2), 6000)
    for args in (tou, tiered, V2):
        assert tariff_args(tariff_from_args(args)) == args


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"price": "0.6"}, "0.6 yuan/kWh is written 6000"),  # the config's own hint
        ({"price": -1}, "price"),
        ({"version": 0}, "version"),
        ({"effective": "2026-11-22T10:00:00+08:00"}, "UTC milliseconds"),
        ({"kind": "daily"}, "kind"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"kind": "tiered", "thresholds": [100, 50], "prices": [1, 2, 3]}, "must increase"),
        ({"kind": "tiered", "thresholds": [100], "prices": [1, 2, 3]}, "2 prices are needed"),
        ({"kind": "tou", "slots": {"08:00": 2}, "prices": {2: 1}}, "first slot must start"),
        ({"kind": "tou", "slots": {"00:00": 2}, "prices": {3: 1}}, "slot 2 has no price"),
        ({"kind": "tou", "slots": [1, 2], "prices": {2: 1}}, '"HH:MM" -> slot'),
    ],
)
def test_a_bad_version_is_refused_with_the_config_reason(
    change: dict[str, object], message: str
) -> None:
    args = {**V2, **change}
    if "kind" in change and change["kind"] != "flat":
        args.pop("price", None)
    with pytest.raises(ConfigError) as caught:
        tariff_from_args(args)  # type: ignore[arg-type]
    assert message in caught.value.message


# --- the late tariff, by hand -------------------------------------------------------------


@dataclass
class Bench:
    config: GatewayConfig
    store: Store
    charger: Charger
    now_ms: int

    def read(self, meter: str, hours: float, wh: int, flags: int = 0) -> None:
        """A reading of ``meter`` at NOW + ``hours`` (negative: before NOW)."""
        ts = NOW_MS + int(hours * H)
        self.charger.submit(Reading(meter, ts, {Quantity.ENERGY_IMPORT: wh}, flags))
        assert self.charger.wait_idle(10)

    def balances(self) -> dict[str, int]:
        self.store.writer.flush(10)
        with LedgerReader(self.store.path) as reader:
            return {a.id: a.balance for a in reader.accounts()}

    def db(self, fn):  # type: ignore[no-untyped-def]
        return self.store.writer.call(fn).result(10)


def open_bench(path: Path, config: GatewayConfig, known: Tariff | None = None) -> Bench:
    """The store at ``path`` with a Charger on it (``known``: a version in its book from
    the start, as if it had come in time)."""
    store = Store.open(path, gateway_id="gw", max_delay=0.01)
    bench_now = [NOW_MS]
    book = load_book(store.writer, config)
    if known is not None:
        book = book.with_tariff(known)
    charger = Charger(store.writer, config, book, now_ms=lambda: bench_now[0])
    return Bench(config, store, charger, NOW_MS)


def new_bench(path: Path, text: str, known: Tariff | None = None) -> Bench:
    """A store with the accounts of ``text`` funded (FUND each) and a Charger on it."""
    config = parse_config(text, "gw.yaml")
    store = Store.open(path, gateway_id="gw")
    store.writer.call(
        lambda db: sync_accounts(db, config.accounts, opened_day=NOW.date(), opened_ms=0),
        durable=True,
    ).result(10)
    for account in config.accounts:
        fund = TopUp(f"fund-{account.id}", account.id, EntryKind.TOP_UP, FUND, 0)
        assert Ledger(store).top_up(fund).result(10).applied
    store.close()
    return open_bench(path, config, known)


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    b = new_bench(tmp_path / "gw.db", CONFIG)
    yield b
    b.charger.close()
    b.store.close()


def consume(b: Bench) -> None:
    """The journal: E = NOW - 2 h is when v2 (0.6000) takes effect, found out later.

    a1 (A): 100_000 at -4 h; 101_000 at -3 h; 104_000 at -1.5 h; 105_500 at NOW.
    a2 (A):  50_000 at -4 h;  50_333 at -2.5 h; 51_111 at -0.75 h; 51_500 at NOW.
    b1 (B):  10_000 at -5 h;  14_000 at -1 h;  14_250 at -0.25 h.
    A curve point of a1 at -1 h (stored, never rated) must not disturb anything.
    """
    b.read("a1", -4, 100_000)
    b.read("a2", -4, 50_000)
    b.read("b1", -5, 10_000)
    b.read("a1", -3, 101_000)
    b.read("a2", -2.5, 50_333)
    b.read("a1", -1.5, 104_000)
    b.read("b1", -1, 14_000)
    b.read("a1", -1, 999_999, FLAG_CURVE)
    b.read("a2", -0.75, 51_111)
    b.read("b1", -0.25, 14_250)
    b.read("a1", 0, 105_500)
    b.read("a2", 0, 51_500)


def test_a_late_flat_tariff_posts_one_exact_adjustment_per_account(bench: Bench) -> None:
    consume(bench)
    # posted at 0.5000 (x 5 per Wh):
    # A: a1 5_500 Wh -> 27_500; a2 1_500 Wh -> 7_500          = 35_000
    # B: b1 4_250 Wh -> 21_250
    assert bench.balances() == {"A": FUND - 35_000, "B": FUND - 21_250, "vacancy": 0}
    v2 = tariff_from_args(V2)
    assert newer_refusal(bench.charger, v2) is None
    added = add_version(bench.charger, v2, NOW_MS).result(30)
    # re-rated, v1 (x 5) until E = -2 h, v2 (x 6) after; an interval across E is split
    # by time:
    # a1: [-4,-3] 1_000 v1; [-3,-1.5] 3_000 Wh: 1 h before E, 0.5 h after -> 2_000 v1,
    #     1_000 v2; [-1.5,0] 1_500 v2.  v1 3_000 Wh -> 15_000, v2 2_500 Wh -> 15_000
    # a2: [-4,-2.5] 333 v1; [-2.5,-0.75] 778 Wh over 105 min, 30 min before E:
    #     round(778 x 30 / 105) = round(222.29) = 222 v1, 556 v2; [-0.75,0] 389 v2.
    #     v1 555 Wh -> 2_775, v2 945 Wh -> 5_670
    # A: 15_000 + 15_000 + 2_775 + 5_670 = 38_445 - 35_000 posted = +3_445 owed
    # b1: [-5,-1] 4_000 Wh over 4 h, 3 h before E -> 3_000 v1, 1_000 v2; [-1,-0.25]
    #     250 v2.  15_000 + 7_500 = 22_500 - 21_250 posted = +1_250 owed
    # ``rerated`` and ``posted`` cover the readings after each meter's last one before E
    # (a1 from -3 h, a2 from -2.5 h, b1 from -5 h): A posted 35_000 - 1_000 x 5 (a1)
    # - 333 x 5 (a2) = 28_335, re-rated 2_000 x 5 + 2_500 x 6 + 222 x 5 + 945 x 6 = 31_780
    assert added.late
    assert added.rerating is not None
    got = {a.account_id: (a.amount, a.rerated, a.posted) for a in added.rerating.adjustments}
    assert got == {"A": (3_445, 31_780, 28_335), "B": (1_250, 22_500, 21_250)}
    assert added.rerating.skipped == {}
    assert added.rerating.readings == 6  # after the anchors: 2 each (the curve point is none)
    reason = "tariff flat v2 effective 2026-11-22T10:00+08:00 applied late"
    assert {a.reason for a in added.rerating.adjustments} == {reason}
    assert bench.balances() == {"A": FUND - 38_445, "B": FUND - 22_500, "vacancy": 0}
    assert bench.charger.balance("A") == FUND - 38_445  # the cache reloaded
    rows = bench.db(
        lambda db: db.execute(
            "SELECT account, kind, amount, reference, tariff_version, reason FROM ledger"
            " WHERE kind = ? ORDER BY account",
            (int(EntryKind.ADJUSTMENT),),
        ).fetchall()
    )
    assert rows == [
        ("A", int(EntryKind.ADJUSTMENT), -3_445, "tariff:flat:v2:A", 2, reason),
        ("B", int(EntryKind.ADJUSTMENT), -1_250, "tariff:flat:v2:B", 2, reason),
    ]
    assert bench.db(check_balances) == []
    # rating goes on from the re-rated accumulators and under v2
    totals = bench.db(lambda db: load_state(db, "a1"))
    assert totals.totals == {
        ("flat", 1, "flat"): Running(3_000, 15_000),
        ("flat", 2, "flat"): Running(2_500, 15_000),
    }
    bench.read("a1", 1, 106_500)  # 1_000 Wh at 0.6000 -> 6_000
    assert bench.balances()["A"] == FUND - 38_445 - 6_000
    status = in_force(bench.charger.book, ["flat"], NOW)
    assert status == {"flat": {"version": 2, "kind": "flat", "effective": NOW_MS - 2 * H}}


def test_the_same_version_twice_changes_nothing_and_a_restart_keeps_it(
    bench: Bench, tmp_path: Path
) -> None:
    consume(bench)
    v2 = tariff_from_args(V2)
    add_version(bench.charger, v2, NOW_MS).result(30)
    after = bench.balances()
    # the same version again is not newer: refused before anything is done
    assert newer_refusal(bench.charger, v2) == "tariff flat has version 2: v2 is not newer"
    # nor is an older effective time under a higher number
    v3_early = tariff_from_args({**V2, "version": 3, "effective": NOW_MS - 3 * H})
    assert "must take effect after" in (newer_refusal(bench.charger, v3_early) or "")
    # the store refuses a second row for (flat, 2) in any case: nothing posted
    with pytest.raises(StoreError, match="tariff flat v2 is already kept"):
        add_version(bench.charger, v2, NOW_MS).result(30)
    assert bench.balances() == after
    assert bench.charger.book.at("flat", NOW).version == 2  # the book stayed
    bench.charger.close()
    bench.store.close()
    # a restart: the book is the configuration's v1 and the stored v2
    again = open_bench(tmp_path / "gw.db", bench.config)
    try:
        assert [t.version for t in again.charger.book.versions("flat")] == [1, 2]
        assert again.charger.book.at("flat", NOW).version == 2
        assert again.balances() == after
        assert again.db(check_balances) == []
        again.read("b1", 1, 15_250)  # 1_000 Wh at v2
        assert again.balances()["B"] == after["B"] - 6_000
    finally:
        again.charger.close()
        again.store.close()
    bench.store = Store.open(tmp_path / "gw.db", gateway_id="gw")  # for the fixture's close
    bench.charger = Charger(bench.store.writer, bench.config)


def test_a_version_effective_later_rerates_nothing(bench: Bench) -> None:
    consume(bench)
    before = bench.balances()
    v2 = tariff_from_args({**V2, "effective": NOW_MS + H})
    added = add_version(bench.charger, v2, NOW_MS).result(30)
    assert not added.late and added.rerating is None
    assert bench.balances() == before
    assert in_force(bench.charger.book, ["flat"], NOW)["flat"] == {
        "version": 1,
        "kind": "flat",
        "effective": ms_of(datetime(2026, 1, 1, tzinfo=SH)),
        "next": {"version": 2, "effective": NOW_MS + H},
    }
    bench.read("a1", 2, 106_500)  # [0, +2 h]: 1_000 Wh, half before +1 h, half after
    assert bench.balances()["A"] == before["A"] - (500 * 5 + 500 * 6)


def test_a_pruned_journal_is_not_rerated_but_named(bench: Bench) -> None:
    consume(bench)
    before = bench.balances()
    # the readings of b1 up to -1 h are gone (as retention may prune acknowledged ones)
    bench.store.writer.call(
        lambda db: db.execute(
            "DELETE FROM readings WHERE meter = (SELECT id FROM meters WHERE name = 'b1')"
            " AND ts_ms <= ?",
            (NOW_MS - H,),
        ),
        durable=True,
    ).result(10)
    added = add_version(bench.charger, tariff_from_args(V2), NOW_MS).result(30)
    assert added.rerating is not None
    assert set(added.rerating.skipped) == {"B"}
    assert [a.account_id for a in added.rerating.adjustments] == ["A"]
    assert bench.balances() == {**before, "A": before["A"] - 3_445}
    db = Database(sqlite3.connect(bench.store.path))
    try:
        assert check_balances(db) == []
    finally:
        db.conn.close()


TIERED = """\
gateway_id: gw
serial_buses: [{name: dl, port: /dev/null, protocol: dlt645}]
meters:
  - {id: c1, bus: dl, address: '000000000001', account: C}
  - {id: c2, bus: dl, address: '000000000002', account: C}
accounts:
  - {id: C, type: prepaid, tariff: res}
tariffs:
  - {id: res, version: 1, effective: "2026-01-01T00:00:00+08:00", kind: tiered,
     thresholds: [10000], prices: [5000, 8000]}
uplink: {host: localhost}
"""


def test_a_late_tiered_tariff_keeps_the_accounts_shared_tier_total(tmp_path: Path) -> None:
    b = new_bench(tmp_path / "gw.db", TIERED)
    try:
        # Account C, two meters, one tier total (threshold 10_000 Wh this year); v1 tier 1
        # 0.5000 (x 5), tier 2 0.8000 (x 8).  Posted as it came:
        b.read("c1", -5, 0)
        b.read("c2", -5, 0)
        b.read("c1", -4, 9_000)  # 9_000 Wh tier 1: 45_000; year 9_000
        b.read("c2", -3, 500)  # 500 Wh tier 1: 2_500; year 9_500
        b.read("c1", -1, 10_000)  # 1_000 Wh: 500 tier 1 (cum 9_500: 47_500 - 45_000
        #                           = 2_500) + 500 tier 2 (4_000); year 10_500
        b.read("c2", 0, 1_500)  # 1_000 Wh tier 2: 8_000; year 11_500
        assert b.balances()["C"] == FUND - 62_000
        # v2 from E = -2 h: tier 1 0.6000, tier 2 0.9000, found out at NOW
        v2 = {**V2, "id": "res", "kind": "tiered", "thresholds": [10_000], "prices": [6000, 9000]}
        del v2["price"]
        added = add_version(b.charger, tariff_from_args(v2), NOW_MS).result(30)
        # Re-rated from the anchors c1 -4 h, c2 -3 h (tier total then 9_500):
        # c1 [-4,-1] 1_000 Wh, split at E by time 2:1 -> 667 v1, 333 v2
        #    v1 667 Wh: 500 tier 1 (to 10_000; cum 9_500 -> 2_500), 167 tier 2 x 8 = 1_336
        #    v2 333 Wh tier 2 x 9 = 2_997                                  year 10_500
        # c2 [-3,0] 1_000 Wh split 1:2 -> 333 v1 tier 2 x 8 = 2_664, 667 v2 x 9 = 6_003
        # re-rated 2_500 + 1_336 + 2_997 + 2_664 + 6_003 = 15_500
        # posted for the same readings 2_500 + 4_000 + 8_000 = 14_500: +1_000 owed
        # (= the 1_000 Wh after E, all tier 2, x (9000 - 8000) / 1000)
        assert added.rerating is not None
        got = [(a.account_id, a.amount, a.rerated, a.posted) for a in added.rerating.adjustments]
        assert got == [("C", 1_000, 15_500, 14_500)]
        assert b.balances()["C"] == FUND - 63_000
        assert b.db(check_balances) == []
        states = b.db(lambda db: {m: load_state(db, m).totals for m in ("c1", "c2")})
        assert states == {
            "c1": {
                ("res", 1, "tier:1"): Running(9_500, 47_500),
                ("res", 1, "tier:2"): Running(167, 1_336),
                ("res", 2, "tier:2"): Running(333, 2_997),
            },
            "c2": {
                ("res", 1, "tier:1"): Running(500, 2_500),
                ("res", 1, "tier:2"): Running(333, 2_664),
                ("res", 2, "tier:2"): Running(667, 6_003),
            },
        }
        year = b.db(lambda db: db.execute("SELECT year_wh FROM rating_year").fetchall())
        assert year == [(11_500,)]
        b.read("c1", 1, 10_100)  # 100 Wh more, v2 tier 2: 900
        assert b.balances()["C"] == FUND - 63_900
    finally:
        b.charger.close()
        b.store.close()


def test_readings_journaled_after_the_plan_are_rerated_with_charging_paused(
    bench: Bench,
) -> None:
    # The golden journal again, but the bulk is planned on a snapshot (a read
    # connection, charging going on) after a1's reading at -1.5 h; B has no reading after
    # E yet then.  The rest arrives before the transaction and is carried on in it.
    for meter, hours, wh in [
        ("a1", -4, 100_000), ("a2", -4, 50_000), ("b1", -5, 10_000),
        ("a1", -3, 101_000), ("a2", -2.5, 50_333), ("a1", -1.5, 104_000),
    ]:  # fmt: skip
        bench.read(meter, hours, wh)
    v2 = tariff_from_args(V2)
    old, charger = bench.charger.book, bench.charger
    new = old.with_tariff(v2)
    snapshot = connect(bench.store.path, readonly=True)
    try:
        plan = plan_late(snapshot, v2, old, new, charger.billing, charger.calendar)
    finally:
        snapshot.conn.close()
    assert set(plan.accounts) == {"A", "B"} and plan.skipped == {}
    for meter, hours, wh in [
        ("b1", -1, 14_000), ("a2", -0.75, 51_111), ("b1", -0.25, 14_250),
        ("a1", 0, 105_500), ("a2", 0, 51_500),
    ]:  # fmt: skip
        bench.read(meter, hours, wh)

    def run(db: Database) -> LateRerating:
        return finish_late(
            db, plan, old, new, charger.billing, charger.calendar, ts_ms=NOW_MS, reason="late"
        )

    done = charger.add_tariff(new, run).result(30)
    # the same as all at once (see the golden test): A +3_445, B +1_250
    got = {a.account_id: (a.amount, a.rerated, a.posted) for a in done.adjustments}
    assert got == {"A": (3_445, 31_780, 28_335), "B": (1_250, 22_500, 21_250)}
    assert done.readings == 6 and done.skipped == {}
    assert bench.balances() == {"A": FUND - 38_445, "B": FUND - 22_500, "vacancy": 0}
    assert bench.db(check_balances) == []
    assert charger.book is new


def test_a_second_late_version_rerates_what_the_first_corrected(bench: Bench) -> None:
    consume(bench)
    add_version(bench.charger, tariff_from_args(V2), NOW_MS).result(30)  # A +3_445, B +1_250
    v3 = tariff_from_args({**V2, "version": 3, "effective": NOW_MS - H, "price": 7000})
    added = add_version(bench.charger, v3, NOW_MS).result(30)
    # v1 (x 5) until -2 h, v2 (x 6) until -1 h, v3 (x 7) after.  The charges of these
    # readings were corrected by v2's adjustment: what they cost now is v2's re-rating.
    # a1 from -1.5 h: [-1.5,0] 1_500 Wh, 0.5 h before -1 h: 500 v2, 1_000 v3
    #    v2 then 1_500 x 6 = 9_000; now 500 x 6 + 1_000 x 7 = 10_000: +1_000
    # a2 from -2.5 h: [-2.5,-0.75] 778 Wh over 105 min cut at 30 and 90 min:
    #    round(778 x 30/105) = 222, round(778 x 90/105) = round(666.86) = 667:
    #    222 v1, 445 v2, 111 v3; then [-0.75,0] 389 v3.  v2 then 556 + 389 = 945 Wh,
    #    now 445 v2 and 500 v3: 500 Wh from x 6 to x 7: +500          A: +1_500
    # b1 from -1 h: [-1,-0.25] 250 Wh v2 then (1_500), v3 now (1_750): B: +250
    assert added.rerating is not None
    got = {a.account_id: a.amount for a in added.rerating.adjustments}
    assert got == {"A": 1_500, "B": 250} and added.rerating.skipped == {}
    assert bench.balances() == {"A": FUND - 38_445 - 1_500, "B": FUND - 22_500 - 250, "vacancy": 0}
    assert bench.db(check_balances) == []
    assert in_force(bench.charger.book, ["flat"], NOW)["flat"]["version"] == 3  # type: ignore[index]


def test_the_settlement_snapshot_names_the_version_sent_by_command(bench: Bench) -> None:
    consume(bench)
    add_version(bench.charger, tariff_from_args(V2), NOW_MS).result(30)
    # the calendar's settlement task asks the charger for its book (attach does so)
    clock = ManualClock(datetime(2026, 12, 1, 0, 5, tzinfo=SH), "Asia/Shanghai")
    task = SettlementTask(
        clock, bench.store.writer, bench.config, books=lambda: bench.charger.book, delay_s=60
    )
    task.tick()
    rows = bench.db(
        lambda db: db.execute(
            "SELECT account, tariff, tariff_version FROM settlements"
            " WHERE kind = 'monthly' AND period = '2026-12' ORDER BY account"
        ).fetchall()
    )
    assert [tuple(r) for r in rows if r[0] in ("A", "B")] == [("A", "flat", 2), ("B", "flat", 2)]


# --- property: late or known from the start, the money is the same ------------------------

KINDS = st.sampled_from(["flat", "tou", "tiered"])


def version_two(kind: str, effective_ms: int, p1: int, p2: int, threshold: int) -> dict:  # type: ignore[type-arg]
    base = {"id": "flat", "version": 2, "effective": effective_ms, "kind": kind}
    if kind == "flat":
        return {**base, "price": p1}
    if kind == "tou":
        return {**base, "slots": {"00:00": 4, "08:00": 2, "11:00": 3, "22:00": 4},
                "prices": {2: p1, 3: p2, 4: p1 // 3}}  # fmt: skip
    return {**base, "thresholds": [threshold], "prices": [p1, p2]}


@settings(max_examples=40, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["a1", "a2", "b1"]),
            st.integers(1, 90),
            st.integers(0, 2_000),
            st.sampled_from([0, 0, 0, FLAG_TIME_UNTRUSTED, FLAG_DISCONTINUITY]),
        ),
        min_size=1,
        max_size=25,
    ),
    back_min=st.integers(1, 900),
    kind=KINDS,
    p1=st.integers(0, 20_000),
    p2=st.integers(0, 20_000),
    threshold=st.integers(1, 20_000),
)
def test_a_late_version_costs_what_it_would_have_cost_known_from_the_start(
    events: list[tuple[str, int, int, int]],
    back_min: int,
    kind: str,
    p1: int,
    p2: int,
    threshold: int,
) -> None:
    # The same readings (some with an untrusted time, some after a discontinuity) charged
    # twice: once with v1 alone and v2 arriving late (re-rated, adjusted), once with v2
    # in the book from the start.  (Not untrusted times with a time-of-use v2: whether
    # such a reading is deferred depends on the book having any time-of-use version, so
    # v2 known in time would defer readings taken long before it took effect.)
    # Balances, meters' accumulators and the tier total must agree to the unit.
    total = sum(e[1] for e in events)
    start = NOW_MS - total * 60_000
    v2 = tariff_from_args(version_two(kind, NOW_MS - back_min * 60_000, p1, p2, threshold))
    outcomes = []
    for late in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            b = new_bench(Path(tmp) / "gw.db", CONFIG, None if late else v2)
            try:
                energy = {"a1": 1_000, "a2": 2_000, "b1": 3_000}
                t = start
                for m in energy:
                    b.read(m, (t - NOW_MS) / H, energy[m])
                for meter, dt, wh, flags in events:
                    if kind == "tou":  # see below
                        flags &= ~FLAG_TIME_UNTRUSTED
                    t += dt * 60_000
                    energy[meter] += wh
                    b.read(meter, (t - NOW_MS) / H, energy[meter], flags)
                if late:
                    added = add_version(b.charger, v2, NOW_MS).result(30)
                    assert added.rerating is not None and added.rerating.skipped == {}
                assert b.db(check_balances) == []
                states = b.db(lambda db: {m: load_state(db, m) for m in ("a1", "a2", "b1")})
                years = b.db(
                    lambda db: db.execute(
                        "SELECT account, year_wh FROM rating_year ORDER BY account"
                    ).fetchall()
                )
                # (a total of 0 kept or not yet kept is the same: an untrusted reading
                # rated at v1 keeps it, deferred under a time-of-use v2 it is not)
                totals = {account: wh for account, wh in years if wh}
                outcomes.append((b.balances(), states, totals))
            finally:
                b.charger.close()
                b.store.close()
    assert outcomes[0] == outcomes[1]
