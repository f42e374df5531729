"""Migration 8 (charging): per-tariff registers in the rating state, the prepaid state
and command-set thresholds, in a freshly opened store."""

from __future__ import annotations

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
        assert columns("rating_year") == ["account", "year_wh", "year_end_ms"]
        assert columns("prepaid_state") == ["account", "state", "tripped", "balance", "ts_ms"]
        assert columns("prepaid_thresholds") == [
            "account", "alarm1", "alarm2", "overdraft_limit", "close_allow",
            "emergency_credit", "ts_ms",
        ]  # fmt: skip
    finally:
        store.close()
