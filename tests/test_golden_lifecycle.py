"""Golden cases of the meter lifecycle, worked out by hand (issue 7, "Done means").

Money in 0.0001 yuan.  The rounding rule: per meter position and tariff segment the
amount posted is round_half_up(cumulative Wh x price / 1000) minus what was posted
before.  Balances exact to the unit; the ledger re-adds to every balance afterwards.
"""

from __future__ import annotations

from lifecycle_bench import Bench, ms, reading
from lifecycle_bench import bench as bench  # the fixture

from gateway.lifecycle import change_ct, remove_meter, replace_meter, settle_dead_meter
from gateway.protocols.quantities import FLAG_ESTIMATED, EventCode
from gateway.store.journal import JournalReader, Kind
from gateway.store.ledger import EntryKind, LedgerReader
from gateway.store.meters import MeterRecord, record_of


def events(bench: Bench, code: EventCode) -> list[dict[int | str, int | str]]:
    bench.store.flush(10)
    with JournalReader(bench.store.path) as reader:
        rows = reader.records(Kind.EVENTS, limit=10_000)
    return [e.detail for _, e in rows if getattr(e, "code", None) == int(code)]


def test_replacement_carries_the_tier_totals_over(bench: Bench) -> None:
    # Account R, tiered "res": 0.5283 up to 2760 kWh a year, 0.5783 up to 4800 kWh,
    # 0.8283 above.  Meter r1 is replaced by r2; the account's year total goes on.
    bench.top_up("R", 30_000_000, "t-R")  # 3000 yuan
    assert bench.post("r1", 0, 0) == 0  # baseline
    # 4000 kWh: 2760 kWh x 0.5283 = 1458.1080 yuan -> 14_581_080
    #         + 1240 kWh x 0.5783 =  717.0920 yuan ->  7_170_920    = 21_752_000
    assert bench.post("r1", 3600, 4_000_000) == 21_752_000
    # final reading of r1: +30 Wh in tier 2; tier-2 cumulative 1_240_030 Wh
    # x 5783 / 1000 = 7_171_093.49 -> 7_171_093; minus 7_170_920 posted = 173
    final = reading("r1", 7200, 4_000_030)
    initial = reading("r2", 7260, 1_230)  # the new meter shows 1.23 kWh: its baseline
    done = bench.run(
        lambda db: replace_meter(
            db,
            "r1",
            final,
            "r2",
            initial,
            billing=bench.billing("r1"),
            book=bench.book,
            reason="meter burnt",
            ts_ms=ms(7260),
        )
    )
    assert done.charged == 173 and done.year_wh == 4_000_030 and done.carried == 2
    assert done.balance == 30_000_000 - 21_752_000 - 173  # 8_247_827
    assert record_of_(bench, "r1") == ("replaced", "r2")
    assert record_of_(bench, "r2") == ("active", None)
    # r2 +30 Wh (1_260): tier-2 cumulative carried on: 1_240_060 Wh x 5783 / 1000
    # = 7_171_266.98 -> 7_171_267; minus 7_171_093 = 174.  (Without the carry-over r2
    # would round 30 Wh alone: 173.49 -> 173, one unit lost to drift.)
    r2 = bench.billing("r1", meter="r2")  # the config now bills r2 to R (charger reload)
    assert bench.post("r2", 7320, 1_260, billing=r2) == 174
    # r2 +800 kWh (801_260): the year goes from 4_000_060 to 4_800_060 Wh, crossing
    # 4800 kWh: tier 2 takes 799_940 Wh, tier 3 60 Wh.
    #   tier 2 cumulative 2_040_000 Wh x 5783 / 1000 = 11_797_320; - 7_171_267 = 4_626_053
    #   tier 3: 60 Wh x 8283 / 1000 = 496.98 -> 497
    assert bench.post("r2", 10_800, 801_260, billing=r2) == 4_626_053 + 497
    # The account paid exactly its year's tiers, as if one meter had measured it all:
    #   2_760_000 Wh x 0.5283 = 14_581_080; 2_040_000 Wh x 0.5783 = 11_797_320;
    #   60 Wh x 0.8283 = 496.98 -> 497;  sum 26_378_897
    #   (= the charges above: 21_752_000 + 173 + 174 + 4_626_053 + 497)
    assert bench.balance("R") == 30_000_000 - (14_581_080 + 11_797_320 + 497)  # 3_621_103
    year = bench.run(lambda db: db.execute("SELECT year_wh FROM rating_year").fetchall())
    assert year == [(4_800_060,)]
    (detail,) = events(bench, EventCode.METER_REPLACED)
    assert detail["new"] == "r2" and detail["initial_wh"] == 1_230 and detail["charged"] == 173


def test_removal_refunds_the_remaining_balance(bench: Bench) -> None:
    # Account A (flat 0.85 yuan/kWh), 100 yuan topped up; m1 used 10 kWh, then is removed.
    bench.top_up("A", 1_000_000, "t-A")
    bench.post("m1", 0, 0)
    assert bench.post("m1", 3600, 10_000) == 85_000  # 10 kWh x 0.85 = 8.5 yuan
    # final 10_123 Wh: cumulative 10_123 x 8500 / 1000 = 86_045.5 -> 86_046; - 85_000 = 1_046
    final = reading("m1", 7200, 10_123)
    done = bench.run(
        lambda db: remove_meter(
            db,
            "m1",
            final,
            billing=bench.billing("m1"),
            book=bench.book,
            refund=True,
            reason="tenant moved out",
            ts_ms=ms(7200),
            operator="tech-7",
        )
    )
    # remaining: 1_000_000 - 86_046 = 913_954, paid back: the balance is 0
    assert (done.charged, done.refunded, done.balance) == (1_046, 913_954, 0)
    assert bench.balance("A") == 0
    with LedgerReader(bench.store.path) as ledger:
        last = ledger.entries(limit=100)[-1]
    assert (last.kind, last.amount, last.balance_after) == (int(EntryKind.REFUND), -913_954, 0)
    assert record_of_(bench, "m1") == ("removed", None)
    (detail,) = events(bench, EventCode.METER_REMOVED)
    assert (detail["final_wh"], detail["refund"], detail["balance"]) == (10_123, 913_954, 0)


def test_ct_change_50_5(bench: Bench) -> None:
    # c1 had a 100/5 A CT (ratio 20); it is changed to 50/5 A (ratio 10).  Registers
    # (kWh on the display) x ratio are what the journal holds.
    bench.top_up("A", 2_000_000, "t-A")
    bench.post("c1", 0, 24_691_200)  # 1234.56 kWh x 20: baseline
    # final at the old ratio: 1240.00 kWh x 20 = 24_800_000 Wh; used 108_800 Wh
    # x 8500 / 1000 = 924_800 (108.8 kWh x 0.85 = 92.48 yuan)
    final = reading("c1", 3600, 24_800_000)
    initial = reading("c1", 3660, 12_400_000)  # the same register at the new ratio (x10)
    done = bench.run(
        lambda db: change_ct(
            db,
            "c1",
            final,
            initial,
            billing=bench.billing("c1"),
            new_ratio=10,
            book=bench.book,
            reason="CT 100/5 -> 50/5",
            ts_ms=ms(3660),
        )
    )
    assert done.charged == 924_800 and done.old == done.new == "c1"
    assert record_of_full(bench, "c1").ratio == 10
    # 1250.37 kWh x 10 = 12_503_700 Wh: used 103_700 Wh (10.37 kWh x 10); the meter's flat
    # accumulator goes on: cumulative 212_500 Wh x 8500 / 1000 = 1_806_250; - 924_800
    # = 881_450
    assert bench.post("c1", 7200, 12_503_700, billing=bench.billing("c1", ratio=10)) == 881_450
    assert bench.balance("A") == 2_000_000 - 1_806_250  # 193_750
    (detail,) = events(bench, EventCode.METER_REPLACED)
    assert (detail["old_ratio"], detail["new_ratio"]) == (20, 10)


def test_dead_meter_estimated_back_charge(bench: Bench) -> None:
    # d1 (flat 0.85) read 60 kWh, then died; an engineer approves an estimate of 250 kWh
    # used since (追补), then d2 takes its place.
    bench.top_up("A", 3_000_000, "t-A")
    bench.post("d1", 0, 50_000)
    assert bench.post("d1", 3600, 60_000) == 85_000  # 10 kWh x 0.85 = 8.5 yuan
    done = bench.run(
        lambda db: settle_dead_meter(
            db,
            "d1",
            final_wh=None,
            estimated_wh=250_000,
            approved_by="engineer Li",
            reason="display dead since 3 May; estimated from last year's May",
            billing=bench.billing("d1"),
            book=bench.book,
            ts_ms=ms(86_400),
        )
    )
    # cumulative 260_000 Wh x 8500 / 1000 = 2_210_000; - 85_000 = 2_125_000
    assert (done.energy_wh, done.estimated, done.charged) == (250_000, True, 2_125_000)
    assert done.balance == 3_000_000 - 2_210_000  # 790_000
    # the back-charge is a journaled reading flagged estimated
    with JournalReader(bench.store.path) as reader:
        last = reader.records(Kind.READINGS, limit=100)[-1][1]
    assert last.meter == "d1" and last.flags & FLAG_ESTIMATED
    (detail,) = events(bench, EventCode.DEAD_METER_SETTLED)
    assert (detail["estimated"], detail["approved_by"]) == (1, "engineer Li")
    assert record_of_(bench, "d1") == ("removed", None)
    # the replacement needs no final reading now; d2 starts at 0.5 kWh
    bench.run(
        lambda db: replace_meter(
            db,
            "d1",
            None,
            "d2",
            reading("d2", 90_000, 500),
            billing=bench.billing("d1"),
            book=bench.book,
            reason="dead meter replaced",
            ts_ms=ms(90_000),
        )
    )
    d2 = bench.billing("d1", meter="d2")
    # +1001 Wh on d2, on d1's accumulator: cumulative 261_001 Wh x 8500 / 1000
    # = 2_218_508.5 -> 2_218_509; - 2_210_000 = 8_509
    assert bench.post("d2", 93_600, 1_501, billing=d2) == 8_509
    assert bench.balance("A") == 3_000_000 - 2_218_509  # 781_491


def record_of_(bench: Bench, meter: str) -> tuple[str, str | None]:
    found = record_of_full(bench, meter)
    return found.status, found.replaced_by


def record_of_full(bench: Bench, meter: str) -> MeterRecord:
    found = bench.run(lambda db: record_of(db, meter))
    assert found is not None
    return found
