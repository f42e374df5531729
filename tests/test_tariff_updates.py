"""Tariff versions received by command: the store table, the validation, the late
re-rating (退补) from the journal.  Money in 0.0001 yuan, energy in Wh."""

from __future__ import annotations

from pathlib import Path

from gateway.store import Store


def test_the_store_has_a_tariff_versions_table(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db", gateway_id="gw") as store:
        cols = store.writer.call(
            lambda db: [r[1] for r in db.execute("PRAGMA table_info(tariff_versions)")]
        ).result()
    assert cols == [
        "tariff", "version", "effective_ms", "kind", "args", "received_ms", "adjustments"
    ]  # fmt: skip
