"""What the collection tasks work on: meters, settings, and the DL/T 645 freeze data.

DL/T 645-2007 keeps the last 62 daily freezes: ``05060000 | n`` is the time of the
n-th last (``YYMMDDhhmm``, meter time) and ``05060100 | n`` its forward active energy
block (total and tariffs 1-4, kWh); ``0001FF01`` is the forward block frozen at the
last settlement moment.  Values become the gateway's units here (Wh x CT x PT).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Protocol

from gateway.config import GatewayConfig
from gateway.protocols.batch import HealthRecord, MeterEvent, TaskKind, TaskResult
from gateway.protocols.dlt645 import to_unit
from gateway.protocols.quantities import Quantity, Reading

__all__ = [
    "FREEZE_DEPTH",
    "SETTLEMENT_BLOCK_DI",
    "Journal",
    "TaskHistory",
    "TaskMeter",
    "TaskSettings",
    "block_values",
    "freeze_block_di",
    "freeze_time_di",
    "task_meters",
]

FREEZE_DEPTH = 0x3E
"""Daily freezes a DL/T 645 meter keeps (DI0 01..3E: 1st..62nd last)."""
SETTLEMENT_BLOCK_DI = 0x0001FF01
"""Forward active energy block at the last settlement moment."""

_BLOCK_QUANTITIES = {
    "total": Quantity.ENERGY_IMPORT,
    "t1": Quantity.ENERGY_T1,
    "t2": Quantity.ENERGY_T2,
    "t3": Quantity.ENERGY_T3,
    "t4": Quantity.ENERGY_T4,
}


def freeze_time_di(n: int) -> int:
    """DI of the time of the ``n``-th last daily freeze (1 = the last)."""
    if not 1 <= n <= FREEZE_DEPTH:
        raise ValueError(f"freeze index {n} is not 1..{FREEZE_DEPTH}")
    return 0x05060000 | n


def freeze_block_di(n: int) -> int:
    """DI of the forward active block of the ``n``-th last daily freeze."""
    if not 1 <= n <= FREEZE_DEPTH:
        raise ValueError(f"freeze index {n} is not 1..{FREEZE_DEPTH}")
    return 0x05060100 | n


def block_values(value: object, ratio: int) -> dict[Quantity, int] | None:
    """A forward active block (``{"total": kWh, "t1": ...}``) in Wh x ``ratio``; None if
    ``value`` is not such a block."""
    if not isinstance(value, dict) or not isinstance(value.get("total"), Decimal):
        return None
    out: dict[Quantity, int] = {}
    for name, quantity in _BLOCK_QUANTITIES.items():
        part = value.get(name)
        if isinstance(part, Decimal):
            out[quantity] = to_unit(part, 1000) * ratio
    return out


@dataclass(frozen=True, slots=True)
class TaskMeter:
    """A meter as the tasks see it: id, protocol, DL/T 645 address, CT x PT ratio."""

    id: str
    protocol: str
    """``dlt645`` (reads its freezes) or another (``modbus``: estimated from readings)."""
    address: str | None = None
    ratio: int = 1

    @property
    def keeps_freezes(self) -> bool:
        return self.protocol == "dlt645"


def task_meters(config: GatewayConfig) -> list[TaskMeter]:
    """Every meter of ``config``, in configuration order."""
    protocols = {bus.name: bus.protocol for bus in config.serial_buses}
    return [TaskMeter(m.id, protocols[m.bus], m.address, m.ratio) for m in config.meters]


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """When and how hard the collection tasks work (times are local business time)."""

    freeze_from: time = time(0, 5)
    """The daily freeze is read from this time of the day on."""
    retry_delays: tuple[int, ...] = (900, 1800, 3600)
    """Seconds before the next try after the 1st, 2nd, ... failed one; the last repeats."""
    backfill_days: int = 62
    """Days of freeze history searched for missing days, today's included (62: all a
    DL/T 645 meter keeps, DI0 01..3E; 1: no back-fill)."""
    settlement_day: int = 1
    """Day of the month of the settlement freeze (taken at 00:00, with the daily one)."""
    curve_step_s: int = 900
    """Load-curve step: a point at every multiple of this (15 minutes)."""
    curve_max_gap_s: int = 900
    """A curve point is interpolated only between readings at most this far apart."""
    estimate_max_gap_s: int = 7200
    """The midnight value of a meter without freezes is interpolated between readings
    at most this far apart."""
    max_jobs_per_bus: int = 8
    """Jobs one tick queues on one bus (periodic polls run between ticks)."""
    job_timeout_s: float = 120.0
    """A job not done after this long counts as failed."""
    gap_s: int = 3600
    """Ticks this far apart mean the tasks were stopped: back-fill what was missed."""
    quiet_before_midnight: time = time(23, 55)
    """No freeze history is read from here to :attr:`freeze_from` (a freeze at the
    meter's midnight would shift the history under the reads)."""

    def __post_init__(self) -> None:
        if not 1 <= self.backfill_days <= FREEZE_DEPTH:
            raise ValueError(f"backfill_days must be 1..{FREEZE_DEPTH}")
        if not 1 <= self.settlement_day <= 28:
            raise ValueError("settlement_day must be 1..28")
        if not self.retry_delays or min(self.retry_delays) <= 0:
            raise ValueError("retry_delays must be positive seconds")
        if self.curve_step_s <= 0 or 86400 % self.curve_step_s:
            raise ValueError("curve_step_s must divide a day")

    def retry_delay(self, failures: int) -> int:
        """Seconds to wait after the ``failures``-th failed try (1 = the first)."""
        return self.retry_delays[min(failures, len(self.retry_delays)) - 1]

    def quiet(self, local: datetime) -> bool:
        """Whether ``local`` (business time) is in the freeze-history quiet window."""
        now = local.time().replace(tzinfo=None)
        return now >= self.quiet_before_midnight or now < self.freeze_from


class Journal(Protocol):
    """Where records go (the store writer, or a list in tests); never blocks."""

    def submit(self, record: Reading | MeterEvent | TaskResult | HealthRecord) -> None: ...


class TaskHistory(Protocol):
    """Recorded task results (the store's :class:`~gateway.store.JournalReader`)."""

    def task_result(self, meter: str, kind: TaskKind, day: date) -> tuple[int, object] | None: ...
