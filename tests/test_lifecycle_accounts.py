"""Accounts opened, changed and closed (gateway.lifecycle.accounts), on a real store:
refusals write nothing; a closed account is refunded to 0 by one REFUND entry and leaves
the accounts in force; arrears and meters left on it refuse a closing; the records win
over the configuration (gateway.store.account_records.effective_accounts)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from lifecycle_bench import FLAT, Bench, count, ms, reading
from lifecycle_bench import bench as bench  # the fixture

from gateway.errors import LifecycleRefused
from gateway.lifecycle import (
    add_meter,
    billing_in,
    change_account,
    close_account,
    open_account,
    remove_meter,
)
from gateway.lifecycle.accounts import accounts_in_force
from gateway.store.ledger import EntryKind


def opening(bench: Bench, account: str, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "type": "prepaid",
        "tariff": "flat",
        "trip_on_arrears": True,
        "opened": None,
        "reason": "new tenant",
        "ts_ms": ms(0),
    }
    args.update(kw)
    return bench.run(
        lambda db: open_account(db, account, config=bench.config, book=bench.book, **args)
    )


def test_refused_openings_and_changes_write_nothing(bench: Bench) -> None:
    for account, kw, words in [
        ("A", {}, "open already"),  # configured
        ("N", {"type": "postpaid"}, "only a prepaid account trips"),
        ("N", {"tariff": "nope"}, "no tariff 'nope'"),
        ("N", {"tariff": None}, "needs a tariff"),
        ("N", {"reason": " "}, "needs a reason"),
        ("vacancy", {}, "cannot be opened"),
        ("N", {"type": "rich"}, "expected one of"),
    ]:
        with pytest.raises(LifecycleRefused, match=words):
            opening(bench, account, **kw)
    with pytest.raises(LifecycleRefused, match="nothing to change"):
        bench.run(
            lambda db: change_account(
                db, "A", config=bench.config, book=bench.book, reason="x", ts_ms=ms(0)
            )
        )
    with pytest.raises(LifecycleRefused, match="no open account"):
        bench.run(
            lambda db: change_account(
                db,
                "Z",
                tariff="flat",
                config=bench.config,
                book=bench.book,
                reason="x",
                ts_ms=ms(0),
            )
        )
    assert count(bench, "account_records") == count(bench, "lifecycle_ops") == 0
    assert count(bench, "accounts") == 4  # A, R, P, vacancy


def test_open_change_close_and_open_again(bench: Bench) -> None:
    done = opening(bench, "N", opened=date(2024, 6, 1))
    assert (done.status, done.type, done.opened, done.balance) == (
        "open",
        "prepaid",
        "2024-06-01",
        0,
    )
    in_force = bench.run(lambda db: accounts_in_force(db, bench.config))
    assert in_force["N"].tariff == "flat" and in_force["N"].opened == date(2024, 6, 1)
    # no longer prepaid: the trip flag goes with it
    changed = bench.run(
        lambda db: change_account(
            db, "N", type="postpaid", config=bench.config, book=bench.book, reason="x", ts_ms=ms(1)
        )
    )
    assert (changed.type, changed.trip_on_arrears, changed.opened) == (
        "postpaid",
        False,
        "2024-06-01",
    )
    row = bench.run(
        lambda db: db.execute(
            "SELECT type, trip_on_arrears FROM accounts WHERE id = 'N'"
        ).fetchone()
    )
    assert tuple(row) == ("postpaid", 0)
    # a meter added to N is billed at N's tariff; N cannot close while it is there
    billing = bench.run(lambda db: billing_in(db, bench.config, "m1"))
    assert billing is not None and billing.account == "A"
    to_n = bench.billing("m2", account="N", opened=date(2024, 6, 1))
    bench.run(
        lambda db: remove_meter(
            db,
            "m2",
            reading("m2", 5, 0),
            billing=bench.billing("m2"),
            book=bench.book,
            refund=False,
            reason="x",
            ts_ms=ms(5),
        )
    )
    bench.run(
        lambda db: add_meter(db, "m2", reading("m2", 10, 0), billing=to_n, reason="x", ts_ms=ms(10))
    )
    assert bench.run(lambda db: billing_in(db, bench.config, "m2")) == to_n
    with pytest.raises(LifecycleRefused, match="still has meters: remove m2"):
        bench.run(lambda db: close_account(db, "N", config=bench.config, reason="x", ts_ms=ms(20)))
    assert bench.post("m2", 60, 1_000, billing=to_n) == FLAT  # 1 kWh
    bench.top_up("N", 50_000, "t-N")
    bench.run(
        lambda db: remove_meter(
            db,
            "m2",
            reading("m2", 70, 1_000),
            billing=to_n,
            book=bench.book,
            refund=False,
            reason="x",
            ts_ms=ms(70),
        )
    )
    entries = count(bench, "ledger")
    closed = bench.run(
        lambda db: close_account(db, "N", config=bench.config, reason="left", ts_ms=ms(80))
    )
    assert (closed.status, closed.refunded, closed.balance) == ("closed", 50_000 - FLAT, 0)
    (refund,) = closed.entries
    assert (refund.kind, refund.amount) == (EntryKind.REFUND, -(50_000 - FLAT))
    assert count(bench, "ledger") == entries + 1 and bench.balance("N") == 0
    assert "N" not in bench.run(lambda db: accounts_in_force(db, bench.config))
    with pytest.raises(LifecycleRefused, match="no open account"):
        bench.run(lambda db: close_account(db, "N", config=bench.config, reason="x", ts_ms=ms(90)))
    again = opening(bench, "N", ts_ms=ms(100))  # opened again: its ledger kept, balance 0
    assert (again.status, again.balance) == ("open", 0)


def test_a_closing_in_arrears_or_with_meters_is_refused(bench: Bench) -> None:
    with pytest.raises(LifecycleRefused, match="still has meters: remove c1, d1, m1, m2"):
        bench.run(lambda db: close_account(db, "A", config=bench.config, reason="x", ts_ms=ms(0)))
    bench.post("r1", 0, 0)
    bench.post("r1", 60, 1_000)  # R owes for 1 kWh
    bench.run(
        lambda db: remove_meter(
            db,
            "r1",
            reading("r1", 70, 1_000),
            billing=bench.billing("r1"),
            book=bench.book,
            refund=False,
            reason="x",
            ts_ms=ms(70),
        )
    )
    assert bench.balance("R") < 0
    with pytest.raises(LifecycleRefused, match="in arrears"):
        bench.run(lambda db: close_account(db, "R", config=bench.config, reason="x", ts_ms=ms(80)))
    assert count(bench, "account_records") == 0
