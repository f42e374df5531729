"""Transformer areas (台区): a gate meter (关口表) fed by its customers, with known loss.

The gate meter's :class:`AreaLoad` is the net of its customers' actual power (0 while
a relay is open; solar customers count negative), plus technical loss (a permille of
that flow, always drawn) plus theft (watts drawn past every meter).  :func:`make_gate`
wires a gate so it is advanced to each customer's relay change or swap before it
happens, so the gate sees every change at the right instant.

:func:`area_truth` gives supply, sales and loss between two :class:`AreaSnapshot`\\ s
by domain.md's rule with solar: supply = gate forward + customers' feed-in, sales =
customers' forward + gate reverse.  It uses the energy actually integrated
(``total_*_wh``), which is what the registers show, across wraps and swaps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.sim.physics import MeterPhysics

__all__ = ["AreaLoad", "AreaSnapshot", "AreaTruth", "area_truth", "make_gate", "snapshot"]


@dataclass(frozen=True)
class AreaLoad:
    """The power through an area's gate meter: customers' net + loss + theft (W)."""

    customers: Sequence[MeterPhysics]
    loss_permille: int = 0
    theft_watts: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.loss_permille < 1000 or self.theft_watts < 0:
            raise ValueError("loss_permille is 0..999 and theft_watts >= 0")

    @property
    def step_s(self) -> int | None:
        """The finest step of the customers' loads (None if all are constant)."""
        steps = [getattr(c.load, "step_s", 1) for c in self.customers]
        given = [s for s in steps if s is not None]
        return min(given) if given else None

    def power_at(self, t: datetime) -> int:
        net = sum(c.load.power_at(t) for c in self.customers if c.relay_closed)
        return net + abs(net) * self.loss_permille // 1000 + self.theft_watts


def make_gate(
    customers: Sequence[MeterPhysics],
    *,
    meter_number: str,
    now: datetime,
    loss_permille: int = 0,
    theft_watts: int = 0,
    **physics: Any,
) -> MeterPhysics:
    """A gate meter over ``customers`` (``physics`` goes to :class:`MeterPhysics`).

    The gate listens to its customers: before a relay change or a swap it is advanced
    to that instant.  A gate has no relay.
    """
    load = AreaLoad(tuple(customers), loss_permille, theft_watts)
    gate = MeterPhysics(meter_number=meter_number, load=load, now=now, has_relay=False, **physics)
    for customer in customers:
        customer.listeners.append(gate.advance)
    return gate


@dataclass(frozen=True)
class AreaSnapshot:
    """Energy integrated so far (Wh) by the gate and each customer, at ``at``."""

    at: datetime
    gate_import_wh: int
    gate_export_wh: int
    customer_import_wh: tuple[int, ...]
    customer_export_wh: tuple[int, ...]


def snapshot(gate: MeterPhysics, customers: Sequence[MeterPhysics], now: datetime) -> AreaSnapshot:
    """Advance the area to ``now`` and record what each meter integrated."""
    for customer in customers:
        customer.advance(now)
    gate.advance(now)
    return AreaSnapshot(
        at=now,
        gate_import_wh=gate.total_import_wh,
        gate_export_wh=gate.total_export_wh,
        customer_import_wh=tuple(c.total_import_wh for c in customers),
        customer_export_wh=tuple(c.total_export_wh for c in customers),
    )


@dataclass(frozen=True)
class AreaTruth:
    """Line loss of an area between two instants: supply, sales, loss (Wh)."""

    start: datetime
    end: datetime
    supply_wh: int
    sales_wh: int

    @property
    def loss_wh(self) -> int:
        return self.supply_wh - self.sales_wh

    @property
    def loss_ppm(self) -> int | None:
        """Loss rate in parts per million of supply (rounded down); None if no supply."""
        if self.supply_wh <= 0:
            return None
        return self.loss_wh * 1_000_000 // self.supply_wh

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "supply_wh": self.supply_wh,
            "sales_wh": self.sales_wh,
            "loss_wh": self.loss_wh,
            "loss_ppm": self.loss_ppm,
        }


def area_truth(before: AreaSnapshot, after: AreaSnapshot) -> AreaTruth:
    """Supply, sales and loss between two snapshots of the same area."""
    if len(before.customer_import_wh) != len(after.customer_import_wh):
        raise ValueError("snapshots of different areas")
    feed_in = sum(after.customer_export_wh) - sum(before.customer_export_wh)
    bought = sum(after.customer_import_wh) - sum(before.customer_import_wh)
    return AreaTruth(
        start=before.at,
        end=after.at,
        supply_wh=after.gate_import_wh - before.gate_import_wh + feed_in,
        sales_wh=bought + after.gate_export_wh - before.gate_export_wh,
    )
