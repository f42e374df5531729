"""The billing year: when tier totals reset, and the prorated thresholds of an account
opened within it (domain.md, "Settlement": yearly tier reset; "Tariffs": proration).

The year starts at local midnight of ``start`` (month, day) in the configured zone and
runs to the same moment a year later.  Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from zoneinfo import ZoneInfo

from gateway.billing.tariffs import TariffBook, prorated_thresholds
from gateway.config.model import GatewayConfig, TieredTariff

__all__ = ["BillingYear"]


@dataclass(frozen=True, slots=True)
class BillingYear:
    """Billing years starting on ``start`` (month, day) at 00:00 local."""

    start: tuple[int, int] = (1, 1)
    timezone: str = "Asia/Shanghai"
    prorate: bool = True  #: an account opened within a year gets prorated tier thresholds

    @classmethod
    def from_config(cls, config: GatewayConfig) -> BillingYear:
        b = config.billing
        return cls(b.year_start, config.timezone, b.prorate_tiers)

    @property
    def tz(self) -> tzinfo:
        return ZoneInfo(self.timezone)

    def _begin(self, year: int) -> datetime:
        month, day = self.start
        return datetime(year, month, day, tzinfo=self.tz)

    def bounds(self, instant: datetime) -> tuple[datetime, datetime]:
        """The billing year holding ``instant`` (aware): [start, end), both UTC."""
        local = instant.astimezone(self.tz)
        begin = self._begin(local.year)
        if local < begin:
            begin = self._begin(local.year - 1)
        end = self._begin(begin.year + 1)
        return begin.astimezone(UTC), end.astimezone(UTC)

    def end_of(self, instant: datetime) -> datetime:
        """When the tier total of the year holding ``instant`` resets (UTC)."""
        return self.bounds(instant)[1]

    def thresholds(
        self, book: TariffBook, tariff_id: str, opened: date | None, instant: datetime
    ) -> tuple[int, ...] | None:
        """Prorated tier thresholds for an account opened on local day ``opened``, in the
        year holding ``instant``, under the tiered version in force then; None when the
        tariff's own apply (no proration, opened before the year, not tiered)."""
        if opened is None or not self.prorate:
            return None
        try:
            tariff = book.at(tariff_id, instant)
        except KeyError:
            return None
        if not isinstance(tariff, TieredTariff):
            return None
        begin, end = self.bounds(instant)
        first, last = begin.astimezone(self.tz).date(), end.astimezone(self.tz).date()
        if not first < opened < last:
            return None
        return prorated_thresholds(tariff.thresholds, opened, first, last)
