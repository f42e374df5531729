"""The ledger: top-ups exactly once by id, kinds as domain.md says, the hoarding limit,
charges, balances that always re-add from the ledger, durable commits through the
store's writer, the ledger in the outbox's batches, and never pruned by retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from gateway.config.model import Account
from gateway.errors import StoreError
from gateway.master.store import MasterStore
from gateway.protocols.batch import LedgerEntry, decode_batch
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import Kind, Store
from gateway.store.ledger import (
    VACANCY,
    Charge,
    EntryKind,
    Ledger,
    LedgerReader,
    Mismatch,
    TopUp,
    apply_top_up,
    balance_of,
    check_balances,
    ensure_account,
    journal_with_charges,
    post_charges,
    sync_accounts,
    vacancy_exceptions,
)
from gateway.store.migrations import JOURNAL
from gateway.store.outbox import Outbox, OutboxReader

T0 = 1_717_200_000_000
DAY = date(2024, 6, 1)
YUAN = 10_000  # 0.0001 yuan units in one yuan


def memory_db() -> Database:
    db = Database(memory=True)
    JOURNAL.apply(db, T0)
    with db.atomic():
        ensure_account(db, "A", "prepaid", trip_on_arrears=True, opened_day=DAY, opened_ms=T0)
        ensure_account(db, "P", "postpaid", trip_on_arrears=False, opened_day=DAY, opened_ms=T0)
        ensure_account(db, "U", "unbilled", trip_on_arrears=False, opened_day=DAY, opened_ms=T0)
    return db


def top(ident: str, amount: int, kind: EntryKind = EntryKind.TOP_UP, **kw: str) -> TopUp:
    return TopUp(ident, "A", kind, amount, T0, **kw)


def test_golden_top_ups_charges_and_kinds() -> None:
    db = memory_db()
    with db.atomic():
        # 100 yuan top-up: balance 0 + 1_000_000 = 1_000_000
        first = apply_top_up(db, top("t1", 100 * YUAN))
        assert first.applied and first.entry is not None
        assert first.entry == LedgerEntry(
            1, "A", T0, EntryKind.TOP_UP, 1_000_000, 1_000_000, "t1", 0
        )
        # 12.3456 yuan consumed: 1_000_000 - 123_456 = 876_544
        [charged] = post_charges(db, [Charge("A", T0 + 1, 123_456, "r:1", 3, "m1")])
        assert (charged.amount, charged.balance_after, charged.tariff_version) == (
            -123_456,
            876_544,
            3,
        )
        # compensation +5 yuan with a reason: 876_544 + 50_000 = 926_544
        comp = apply_top_up(db, top("c1", 5 * YUAN, EntryKind.COMPENSATION, reason="outage"))
        assert comp.entry is not None and comp.entry.balance_after == 926_544
        # reduction -2 yuan with a reason: 926_544 - 20_000 = 906_544
        red = apply_top_up(db, top("d1", -2 * YUAN, EntryKind.REDUCTION, reason="meter fee"))
        assert red.entry is not None and red.entry.balance_after == 906_544
        # emergency +10 yuan, authorised and audited: 906_544 + 100_000 = 1_006_544
        emerg = apply_top_up(
            db, top("e1", 10 * YUAN, EntryKind.EMERGENCY, authorisation="8421", operator="li")
        )
        assert emerg.entry is not None and emerg.entry.balance_after == 1_006_544
        audit = db.execute("SELECT authorisation, operator FROM ledger WHERE reference = 'e1'")
        assert audit.fetchone() == ("8421", "li")
        # refund of what is left at removal: 1_006_544 - 1_006_544 = 0
        refund = apply_top_up(db, top("f1", -1_006_544, EntryKind.REFUND))
        assert refund.entry is not None and refund.entry.balance_after == 0
    assert balance_of(db, "A") == 0
    assert check_balances(db) == []


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (top("x", 0), "must be positive"),
        (top("x", -5), "must be positive"),
        (top("x", 5, EntryKind.COMPENSATION), "needs a reason"),
        (top("x", 5, EntryKind.REDUCTION, reason="r"), "must be negative"),
        (top("x", -5, EntryKind.REDUCTION), "needs a reason"),
        (top("x", 5, EntryKind.EMERGENCY, authorisation="1"), "authorisation code"),
        (top("x", 5, EntryKind.EMERGENCY, operator="li"), "authorisation code"),
        (top("x", 5, EntryKind.REFUND), "must be negative"),
        (TopUp("x", "nobody", EntryKind.TOP_UP, 5, T0), "no account"),
        (TopUp("x", "U", EntryKind.TOP_UP, 5, T0), "unbilled"),
        (top("", 5), "needs an id"),
        (top("x", 5, EntryKind.CHARGE), "not a top-up kind"),
        (top("x", 0, EntryKind.REVERSAL, reverses="missing"), "no top-up"),
    ],
)
def test_refused_top_ups_write_nothing(request_: TopUp, reason: str) -> None:
    db = memory_db()
    with db.atomic():
        result = apply_top_up(db, request_)
    assert result.refused is not None and reason in result.refused
    assert result.entry is None and not result.applied
    assert db.execute("SELECT count(*) FROM ledger").fetchone()[0] == 0
    assert balance_of(db, "A") == 0


def test_hoarding_limit_refuses_above_it_and_emergency_limit() -> None:
    db = memory_db()
    with db.atomic():
        # limit 500 yuan: 300 + 200 = 500 is allowed (not above), then +0.0001 is refused
        assert apply_top_up(db, top("a", 300 * YUAN), hoarding_limit=500 * YUAN).applied
        assert apply_top_up(db, top("b", 200 * YUAN), hoarding_limit=500 * YUAN).applied
        refused = apply_top_up(db, top("c", 1), hoarding_limit=500 * YUAN)
        assert refused.refused is not None and "hoarding limit" in refused.refused
        # a refused id is not remembered: once there is room, the same id applies
        post_charges(db, [Charge("A", T0, 1, "r")])
        assert apply_top_up(db, top("c", 1), hoarding_limit=500 * YUAN).applied
        over = apply_top_up(
            db,
            top("e", 21 * YUAN, EntryKind.EMERGENCY, authorisation="1", operator="o"),
            emergency_limit=20 * YUAN,
        )
        assert over.refused is not None and "at most" in over.refused
    assert balance_of(db, "A") == 500 * YUAN
    assert check_balances(db) == []


def test_a_duplicate_top_up_is_reversed_once() -> None:
    db = memory_db()
    with db.atomic():
        # the master sent the same payment twice under two ids: 50 + 50 = 100 yuan
        apply_top_up(db, top("pay-1", 50 * YUAN))
        dup = apply_top_up(db, top("pay-1-dup", 50 * YUAN))
        assert balance_of(db, "A") == 100 * YUAN
        # the reversal names the duplicate: 100 - 50 = 50 yuan
        rev = apply_top_up(db, top("rev-1", 0, EntryKind.REVERSAL, reverses="pay-1-dup"))
        assert rev.applied and rev.entry is not None
        assert (rev.entry.amount, rev.entry.balance_after) == (-50 * YUAN, 50 * YUAN)
        assert dup.entry is not None
        # the reversal itself arrives again: the original entry, nothing written
        again = apply_top_up(db, top("rev-1", 0, EntryKind.REVERSAL, reverses="pay-1-dup"))
        assert again.duplicate and again.entry == rev.entry
        # a second reversal of the same top-up under another id is refused
        second = apply_top_up(db, top("rev-2", 0, EntryKind.REVERSAL, reverses="pay-1-dup"))
        assert second.refused is not None and "already reversed by rev-1" in second.refused
        # a reversal cannot be reversed, nor a charge
        post_charges(db, [Charge("A", T0, 7, "charge-ref")])
        for target in ("rev-1", "charge-ref"):
            bad = apply_top_up(db, top("rev-3", 0, EntryKind.REVERSAL, reverses=target))
            assert bad.refused is not None
        # another account cannot reverse A's top-up
        other = TopUp("rev-4", "P", EntryKind.REVERSAL, 0, T0, reverses="pay-1")
        assert apply_top_up(db, other).refused is not None
    assert balance_of(db, "A") == 50 * YUAN - 7
    assert check_balances(db) == []


def test_charges_unbilled_never_zero_never_negative_never() -> None:
    db = memory_db()
    with db.atomic():
        out = post_charges(
            db,
            [Charge("U", T0, 500, "r1"), Charge("P", T0, 0, "r2"), Charge("P", T0, 300, "r3")],
        )
    assert [(e.account, e.amount) for e in out] == [("P", -300)]
    assert balance_of(db, "U") == 0 and balance_of(db, "P") == -300  # postpaid goes negative
    with pytest.raises(StoreError, match="negative"), db.atomic():
        post_charges(db, [Charge("P", T0, 5, "r4"), Charge("P", T0, -1, "r5")])
    assert balance_of(db, "P") == -300  # the whole transaction rolled back
    with pytest.raises(StoreError, match="no account"), db.atomic():
        post_charges(db, [Charge("ghost", T0, 5, "r6")])


def test_vacancy_account_and_daily_exception_list() -> None:
    db = memory_db()
    with db.atomic():
        ensure_account(db, VACANCY, "postpaid", trip_on_arrears=False, opened_day=DAY, opened_ms=T0)
        post_charges(
            db,
            [
                Charge(VACANCY, T0 + 10, 120, "r1", meter="shop-7"),
                Charge(VACANCY, T0 + 20, 80, "r2", meter="shop-7"),
                Charge(VACANCY, T0 + 30, 5, "r3", meter="red-1"),
                Charge(VACANCY, T0 + 86_400_000, 9, "r4", meter="shop-7"),  # the next day
            ],
        )
    # shop-7: 120 + 80 = 200 in two charges; red-1: 5 in one
    assert vacancy_exceptions(db, T0, T0 + 86_400_000) == [("red-1", 1, 5), ("shop-7", 2, 200)]


def test_check_balances_finds_a_tampered_balance_and_entry() -> None:
    db = memory_db()
    with db.atomic():
        apply_top_up(db, top("t1", 1000))
        post_charges(db, [Charge("A", T0, 300, "r1"), Charge("A", T0, 200, "r2")])
    assert check_balances(db) == []
    db.execute("UPDATE accounts SET balance = 999 WHERE id = 'A'")
    # ledger: +1000 -300 -200 = 500, stored 999
    assert check_balances(db) == [Mismatch("A", 999, 500, None)]
    db.execute("UPDATE accounts SET balance = 500 WHERE id = 'A'")
    db.execute("UPDATE ledger SET balance_after = 1 WHERE id = 2")
    assert check_balances(db) == [Mismatch("A", 500, 500, 2)]


@st.composite
def operations(draw: st.DrawFn) -> list[TopUp | Charge]:
    ops: list[TopUp | Charge] = []
    for i in range(draw(st.integers(0, 30))):
        which = draw(st.sampled_from(["top", "comp", "red", "charge", "rev", "refund"]))
        amount = draw(st.integers(1, 10**9))
        account = draw(st.sampled_from(["A", "P"]))
        ident = draw(st.sampled_from([f"id{i}", "id0", "id1"]))  # repeats of ids
        if which == "charge":
            ops.append(Charge(account, T0 + i, amount, f"r{i}"))
        elif which == "rev":
            ops.append(
                TopUp(
                    ident,
                    account,
                    EntryKind.REVERSAL,
                    0,
                    T0,
                    reverses=f"id{draw(st.integers(0, i))}",
                )
            )
        else:
            kind, sign = {
                "top": (EntryKind.TOP_UP, 1),
                "comp": (EntryKind.COMPENSATION, 1),
                "red": (EntryKind.REDUCTION, -1),
                "refund": (EntryKind.REFUND, -1),
            }[which]
            ops.append(TopUp(ident, account, kind, sign * amount, T0 + i, reason="why"))
    return ops


@settings(max_examples=60, deadline=None)
@given(ops=operations(), limit=st.none() | st.integers(0, 3 * 10**9))
def test_the_ledger_always_re_adds_to_the_balance(
    ops: list[TopUp | Charge], limit: int | None
) -> None:
    db = memory_db()
    for op in ops:
        with db.atomic():
            if isinstance(op, Charge):
                post_charges(db, [op])
            else:
                apply_top_up(db, op, hoarding_limit=limit)
    assert check_balances(db) == []
    for account in ("A", "P"):
        total = db.execute(
            "SELECT coalesce(sum(amount), 0) FROM ledger WHERE account = ?", (account,)
        )
        assert balance_of(db, account) == total.fetchone()[0]
    refs = db.execute("SELECT reference FROM ledger WHERE kind <> 1").fetchall()
    assert len(refs) == len(set(refs))  # every top-up id at most once


@settings(max_examples=40, deadline=None)
@given(
    amounts=st.lists(st.integers(1, 10**8), min_size=1, max_size=12),
    data=st.data(),
)
def test_top_ups_by_id_are_idempotent_in_any_order_of_arrival(
    amounts: list[int], data: st.DataObject
) -> None:
    requests = [top(f"t{i}", a) for i, a in enumerate(amounts)]
    # every top-up arrives one to three times, in any order
    arrivals = data.draw(
        st.permutations([r for r in requests for _ in range(data.draw(st.integers(1, 3)))])
    )
    db = memory_db()
    first: dict[str, LedgerEntry] = {}
    for request in arrivals:
        with db.atomic():
            result = apply_top_up(db, request)
        assert result.entry is not None
        assert result.applied == (request.id not in first)
        assert first.setdefault(request.id, result.entry) == result.entry
    assert balance_of(db, "A") == sum(amounts)
    assert db.execute("SELECT count(*) FROM ledger").fetchone()[0] == len(amounts)


# -- through the store ---------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "gw.db", gateway_id="gw-t", now_ms=lambda: T0, max_delay=0.01)
    yield s
    s.close()


def test_ledger_on_the_writer_is_durable_and_read_back(store: Store) -> None:
    ledger = Ledger(store, hoarding_limit=1000 * YUAN)
    ledger.open_account("A", "prepaid", trip_on_arrears=True, opened_day=DAY, opened_ms=T0).result(
        10
    )
    applied = ledger.top_up(top("t1", 100 * YUAN)).result(10)
    assert applied.applied
    assert ledger.top_up(top("t1", 100 * YUAN)).result(10).duplicate
    charged = ledger.charge([Charge("A", T0, 4321, "r1", 2, "m1")]).result(10)
    assert charged[0].balance_after == 1_000_000 - 4321
    adj = ledger.adjust("A", 321, T0, "rerate:flat:3:A", "tariff v3 late").result(10)
    assert adj.applied and ledger.adjust("A", 321, T0, "rerate:flat:3:A", "x").result(10).duplicate
    assert ledger.adjust("A", 1, T0, "rerate:x", " ").result(10).refused is not None
    assert ledger.check().result(10) == []
    with LedgerReader(store.path) as reader:
        assert reader.balance("A") == 1_000_000 - 4321 + 321
        assert [e.kind for e in reader.entries()] == [
            EntryKind.TOP_UP,
            EntryKind.CHARGE,
            EntryKind.ADJUSTMENT,
        ]
        assert reader.top_up("t1") == applied.entry
        assert reader.top_up("r1") is None  # a charge is no top-up
        assert [a.id for a in reader.accounts()] == ["A"]
        assert reader.balance("nobody") is None


def test_ledger_entries_travel_in_batches_and_are_never_pruned(store: Store) -> None:
    ledger = Ledger(store)
    ledger.open_account("A", "prepaid", trip_on_arrears=True, opened_day=DAY, opened_ms=T0).result(
        10
    )
    for i in range(5):
        ledger.top_up(top(f"t{i}", 1000 + i)).result(10)
    store.submit_many(Reading("m1", T0 + i, {Quantity.ENERGY_IMPORT: i}) for i in range(300))
    assert store.flush(10)
    outbox = Outbox(store, batch_size=200, live_threshold=1000)
    built = outbox.build(live=3, partial=True).result(10)
    assert built.live == (1, 2)
    with OutboxReader(store.path) as reader:
        batches = [decode_batch(reader.payload(e.seq) or b"") for e in reader.pending()]
        assert reader.unsent()["ledger"] == 0
    assert [e.reference for e in batches[0].ledger] == [f"t{i}" for i in range(5)]
    assert [e.entry_id for e in batches[0].ledger] == [1, 2, 3, 4, 5]
    assert batches[1].ledger == ()
    # more entries go in the next batch, after the ones already sent
    ledger.top_up(top("t5", 7)).result(10)
    assert outbox.build(live=1).result(10).live == (3,)
    with OutboxReader(store.path) as reader:
        third = decode_batch(reader.payload(3) or b"")
    assert [e.entry_id for e in third.ledger] == [6]
    marks = outbox.acknowledge(store.meta.epoch, 3).result(10)
    assert marks["ledger"] == 6 and marks[Kind.READINGS] == 300
    # a retention pass with no room left deletes readings but no ledger entry
    result = store.enforce_retention(max_bytes=1).result(10)
    assert result.pruned > 0
    with LedgerReader(store.path) as reader:
        assert len(reader.entries()) == 6
        assert reader.balance("A") == sum(1000 + i for i in range(5)) + 7
    assert ledger.check().result(10) == []


def test_sync_accounts_from_the_config_adds_the_vacancy_account_and_keeps_money() -> None:
    db = memory_db()
    config = [
        Account("A", "postpaid", "flat", trip_on_arrears=False),  # A changes type
        Account("shop-9", "prepaid", "tou", trip_on_arrears=True),
    ]
    with db.atomic():
        apply_top_up(db, top("t1", 123))
        rows = sync_accounts(db, config, opened_day=date(2024, 7, 1), opened_ms=T0 + 1)
    assert [(r.id, r.type, r.trip_on_arrears, r.balance) for r in rows] == [
        ("A", "postpaid", False, 123),  # balance and opening day kept
        ("shop-9", "prepaid", True, 0),
        (VACANCY, "postpaid", False, 0),
    ]
    assert rows[0].opened_day == DAY and rows[1].opened_day == date(2024, 7, 1)
    assert balance_of(db, "U") == 0  # an account no longer configured is kept


def test_the_master_stores_the_ledger_entries_of_a_batch(store: Store, tmp_path: Path) -> None:
    ledger = Ledger(store)
    ledger.open_account("A", "prepaid", trip_on_arrears=True, opened_day=DAY, opened_ms=T0).result(
        10
    )
    ledger.top_up(top("t1", 5000)).result(10)
    ledger.charge([Charge("A", T0 + 5, 1234, "r9", 4)]).result(10)
    Outbox(store).build().result(10)
    with OutboxReader(store.path) as reader:
        payload = reader.payload(1) or b""
    with MasterStore.open(tmp_path / "master.db", now_ms=lambda: T0) as master:
        master.store_batch(decode_batch(payload), received_ms=T0, size=len(payload))
        assert master.ledger("gw-t") == [
            LedgerEntry(1, "A", T0, EntryKind.TOP_UP, 5000, 5000, "t1", 0),
            LedgerEntry(2, "A", T0 + 5, EntryKind.CHARGE, -1234, 3766, "r9", 4),  # 5000 - 1234
        ]


def test_a_reading_and_its_charges_commit_together_or_not_at_all(store: Store) -> None:
    ledger = Ledger(store)
    ledger.open_account("A", "prepaid", trip_on_arrears=True, opened_day=DAY, opened_ms=T0).result(
        10
    )
    reading = Reading("m1", T0, {Quantity.ENERGY_IMPORT: 1500})
    position, entries = ledger.journal_with_charges(
        reading, [Charge("A", T0, 880, "m1@1", 1, "m1")]
    ).result(10)
    assert position == 1 and [(e.amount, e.balance_after) for e in entries] == [(-880, -880)]
    # a charge to an unknown account: the reading is not journaled either
    bad = ledger.journal_with_charges(reading, [Charge("ghost", T0, 1, "m1@2")])
    with pytest.raises(StoreError, match="no account"):
        bad.result(10)
    store.submit(Reading("m2", T0, {}))  # the writer's own meter numbers stay consistent
    assert store.flush(10)
    with store.reader() as reader:
        assert [(p, r.meter) for p, r in reader.readings()] == [(1, "m1"), (2, "m2")]
    with LedgerReader(store.path) as reader:
        assert reader.balance("A") == -880


def test_journal_with_charges_in_memory_names_meters_once() -> None:
    db = memory_db()
    with db.atomic():
        journal_with_charges(db, Reading("m1", T0, {}), [])
        journal_with_charges(db, Reading("m1", T0 + 1, {}), [Charge("A", T0, 2, "x")])
    assert db.execute("SELECT count(*) FROM meters").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 2
