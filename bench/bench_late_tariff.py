"""A late tariff version re-rated from the journal: how long it takes, and how long
charging (the bus threads) waits for it.

Run: ``.venv/bin/python bench/bench_late_tariff.py [--meters 30] [--readings 2000]``.
A store gets ``--meters`` meters (three per account, flat 0.5000 yuan/kWh), each with
``--readings`` readings over the last 24 hours charged through a
:class:`~gateway.charging.Charger`; then version 2 (0.6000) arrives, effective 24 hours
ago.  ``planned_s`` is the work done on a snapshot while charging goes on, ``paused_s``
the transaction with charging paused (the readings journaled since, the writes).  Each
adjustment is checked against Σ energy x 1 (0.6000 - 0.5000 = 1 per Wh): exit status 1
otherwise.  The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.charging import Charger
from gateway.config import parse_config
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import Store
from gateway.store.ledger import EntryKind, Ledger, TopUp, sync_accounts
from gateway.tariff_updates import add_version, load_book, tariff_from_args
from gateway.tariff_updates import rerating as module

__all__ = ["main"]

DAY_MS = 86_400_000


def config_text(meters: int) -> str:
    lines = [
        "gateway_id: bench",
        "serial_buses: [{name: dl, port: /dev/null, protocol: dlt645}]",
        "meters:",
    ]
    for i in range(meters):
        lines.append(f"  - {{id: m{i}, bus: dl, address: '{i + 1:012d}', account: a{i // 3}}}")
    lines.append("accounts:")
    for a in range((meters + 2) // 3):
        lines.append(f"  - {{id: a{a}, type: prepaid, tariff: flat}}")
    lines.append("tariffs:")
    lines.append(
        '  - {id: flat, version: 1, effective: "2020-01-01T00:00:00+08:00", kind: flat,'
        " price: 5000}"
    )
    lines.append("uplink: {host: localhost}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=30)
    parser.add_argument("--readings", type=int, default=2000, help="per meter")
    args = parser.parse_args(argv)
    config = parse_config(config_text(args.meters), "bench.yaml")
    now_ms = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
    step = DAY_MS // args.readings
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        store = Store.open(path, gateway_id="bench", max_delay=0.05)
        store.writer.call(
            lambda db: sync_accounts(db, config.accounts, opened_day=datetime.now().date(),
                                     opened_ms=0),
            durable=True,
        ).result()  # fmt: skip
        for account in config.accounts:
            fund = TopUp(f"fund-{account.id}", account.id, EntryKind.TOP_UP, 10**9, 0)
            Ledger(store).top_up(fund).result()
        charger = Charger(store.writer, config, load_book(store.writer, config))
        energy: dict[str, int] = {}
        for k in range(args.readings + 1):
            ts = now_ms - DAY_MS + k * step
            for i in range(args.meters):
                wh = 1_000 + k * (7 + i % 5)
                charger.submit(Reading(f"m{i}", ts, {Quantity.ENERGY_IMPORT: wh}))
                energy[f"m{i}"] = wh - 1_000
        charger.wait_idle(600)
        v2 = tariff_from_args(
            {"id": "flat", "version": 2, "effective": now_ms - DAY_MS, "kind": "flat",
             "price": 6000}
        )  # fmt: skip
        paused: list[float] = []
        finish = module.finish_late

        def timed(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return finish(*a, **k)
            finally:
                paused.append(time.perf_counter() - start)

        import gateway.tariff_updates as package

        package.finish_late = timed  # type: ignore[attr-defined]
        start = time.perf_counter()
        pending = add_version(charger, v2, now_ms, store_path=path)
        planned = time.perf_counter() - start
        added = pending.result(600)
        total = time.perf_counter() - start
        charger.close()
        store.close()
    assert added.rerating is not None
    got = {a.account_id: a.amount for a in added.rerating.adjustments}
    want: dict[str, int] = {}
    for i in range(args.meters):
        want[f"a{i // 3}"] = want.get(f"a{i // 3}", 0) + energy[f"m{i}"]
    ok = got == want and not added.rerating.skipped
    result = {
        "readings": added.rerating.readings,
        "accounts": len(got),
        "planned_s": round(planned, 3),
        "paused_s": round(sum(paused), 4),
        "total_s": round(total, 3),
        "us_per_reading": round(total / max(1, added.rerating.readings) * 1e6, 1),
        "adjustments_exact": ok,
    }
    print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
