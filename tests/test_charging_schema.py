"""Migrations 8 and 10 (charging): per-tariff registers in the rating state, the prepaid state
and command-set thresholds, in a freshly opened store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.store import Store


def test_migration_8_adds_the_prepaid_tables(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "gw.db", gateway_id="gw")
    try:

        def columns(table: str) -> list[str]:
            def run(db):  # type: ignore[no-untyped-def]
                return [str(r[1]) for r in db.execute(f"PRAGMA table_info({table})").fetchall()]

            return store.writer.call(run).result(10)  # type: ignore[no-any-return]

        assert columns("rating_state")[-1] == "last_slots"
        assert columns("rating_year")[:3] == ["account", "year_wh", "year_end_ms"]
        assert columns("prepaid_state") == ["account", "state", "tripped", "balance", "ts_ms"]
        assert columns("prepaid_thresholds") == [
            "account", "alarm1", "alarm2", "overdraft_limit", "close_allow",
            "emergency_credit", "ts_ms",
        ]  # fmt: skip
    finally:
        store.close()


def test_migration_10_closed_year_account_records_vacancy_lists(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "gw.db", gateway_id="gw")
    try:

        def run(db):  # type: ignore[no-untyped-def]
            cols = {
                t: [str(r[1]) for r in db.execute(f"PRAGMA table_info({t})").fetchall()]
                for t in ("rating_year", "account_records", "vacancy_lists")
            }
            try:
                db.execute(
                    "INSERT INTO account_records (id, type, trip_on_arrears, status, since_ms)"
                    " VALUES ('x', 'prepaid', 0, 'gone', 0)"
                )
            except sqlite3.IntegrityError:
                cols["refused"] = ["status"]
            return cols

        cols = store.writer.call(run).result(10)
        assert cols["rating_year"] == [
            "account", "year_wh", "year_end_ms", "closed_wh", "closed_end_ms"
        ]  # fmt: skip
        assert cols["account_records"] == [
            "id", "type", "tariff", "trip_on_arrears", "opened", "status", "since_ms", "reason"
        ]  # fmt: skip
        assert cols["vacancy_lists"] == ["day", "taken_ms", "meters", "amount"]
        assert cols["refused"] == ["status"]
    finally:
        store.close()
