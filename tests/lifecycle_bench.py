"""Shared helper of the lifecycle and settlement tests: a real store with the ledger,
a Charger for the meters' billing, and readings posted the way charging posts them
(one durable store-writer transaction each)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from polling import START, M, meter_lines
from sqlite_utils import Database

from gateway.charging import Billing, Charger, post_reading
from gateway.config import GatewayConfig, parse_config
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import Store
from gateway.store.ledger import (
    EntryKind,
    TopUp,
    apply_top_up,
    balance_of,
    check_balances,
    sync_accounts,
)

T = TypeVar("T")

FLAT = 8500  # 0.8500 yuan/kWh
TIERS = (5283, 5783, 8283)  # 0.5283, +0.05, +0.30 yuan/kWh (domain.md's residential tiers)
THRESHOLDS = (2_760_000, 4_800_000)  # Wh a year: 2760 and 4800 kWh

TARIFFS = f"""
accounts:
  - {{id: A, type: prepaid, tariff: flat}}
  - {{id: R, type: prepaid, tariff: res}}
  - {{id: P, type: unbilled, tariff: flat}}
tariffs:
  - {{id: flat, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat, price: {FLAT}}}
  - {{id: res, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: tiered,
      thresholds: [{THRESHOLDS[0]}, {THRESHOLDS[1]}], prices: [{TIERS[0]}, {TIERS[1]}, {TIERS[2]}]}}
"""

METERS: list[tuple[M, str | None]] = [
    (M("m1", "dl", "dlt645", 1), "A"),
    (M("m2", "dl", "dlt645", 2), "A"),
    (M("c1", "dl", "dlt645", 3, ct=20), "A"),  # 100/5 A
    (M("d1", "dl", "dlt645", 4), "A"),
    (M("r1", "dl", "dlt645", 5), "R"),
    (M("p1", "dl", "dlt645", 6), "P"),
]


def config_yaml(
    ms: list[tuple[M, str | None]] = METERS, extra: str = "", port: str = "/dev/null"
) -> str:
    lines = [
        "gateway_id: test-gw",
        "serial_buses:",
        f"  - {{name: dl, port: '{port}', protocol: dlt645, baud: 38400, parity: E}}",
        "meters:",
        *meter_lines(ms),
    ]
    lines.append("uplink: {host: localhost}")
    return "\n".join(lines) + "\n" + TARIFFS + extra


def ms(seconds: int) -> int:
    """START + ``seconds``, in UTC milliseconds."""
    return int((START + timedelta(seconds=seconds)).timestamp() * 1000)


def reading(meter: str, seconds: int, wh: int, flags: int = 0) -> Reading:
    return Reading(meter, ms(seconds), {Quantity.ENERGY_IMPORT: wh}, flags)


class Bench:
    """A store at ``path`` with the accounts of the config synced, and its Charger."""

    def __init__(self, path: Path, config: GatewayConfig | None = None) -> None:
        self.config = config or parse_config(config_yaml(), "gw.yaml")
        self.store = Store.open(path, gateway_id="gw", max_delay=0.01)
        self.run(
            lambda db: sync_accounts(db, self.config.accounts, opened_day=START.date(), opened_ms=0)
        )
        self.charger = Charger(self.store.writer, self.config)
        self.book = self.charger.book

    def run(self, fn: Callable[[Database], T]) -> T:
        """``fn`` in one durable store-writer transaction; its result."""
        return self.store.writer.call(fn, durable=True).result(30)

    def billing(self, of: str, /, **change: object) -> Billing:
        """The Charger's billing of meter ``of``, with ``change`` (fields of Billing)."""
        found = self.charger.billing[of]
        return replace(found, **change)  # type: ignore[arg-type]

    def post(
        self, meter: str, seconds: int, wh: int, flags: int = 0, *, billing: Billing | None = None
    ) -> int:
        """Post a reading as charging does (with ``billing``, default the Charger's); the
        money it charged (0.0001 yuan)."""
        billing = billing or self.billing(meter)
        r = reading(meter, seconds, wh, flags)
        cal = self.charger.calendar
        done = self.run(lambda db: post_reading(db, r, billing, self.book, calendar=cal))
        return -sum(e.amount for e in done.entries)

    def top_up(self, account: str, amount: int, ident: str) -> None:
        top = TopUp(ident, account, EntryKind.TOP_UP, amount, ms(0))
        result = self.run(lambda db: apply_top_up(db, top))
        assert result.applied

    def balance(self, account: str) -> int:
        found = self.run(lambda db: balance_of(db, account))
        assert found is not None
        return found

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    """A Bench on the default configuration; every balance re-adds from the ledger at the end."""
    b = Bench(tmp_path / "gw.db")
    yield b
    assert b.run(check_balances) == []
    b.close()


def count(bench: Bench, table: str) -> int:
    """The rows of ``table``."""
    return int(bench.run(lambda db: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]))
