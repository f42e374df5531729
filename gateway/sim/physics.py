"""Meter physics: loads, exact energy integration, tariff registers, clock, freezes.

A :class:`MeterPhysics` integrates a :class:`Load` in the shared calendar clock's time.
Energy is integrated in integer micro-joules (W × µs) and the remainder below one Wh
is carried, so a thousand small :meth:`MeterPhysics.advance` steps give exactly the
registers of one big step.  Integration is cut at the load's own time grid, at the
meter's tariff slot boundaries and at the meter's own midnight (its drifted clock),
so each piece has one power and one tariff, and daily freezes happen at the meter's
own 00:00.  A Wh is credited to the tariff whose piece completed it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "ConstantLoad",
    "DailyCurveLoad",
    "Freeze",
    "Load",
    "MeterPhysics",
    "RandomLoad",
    "make_load",
]

UJ_PER_WH = 3_600_000_000
"""Micro-joules in one watt-hour."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
DAILY_HISTORY = 62
SETTLEMENT_HISTORY = 12


class Load(Protocol):
    """A load profile: power (W, signed; negative = export) at instant ``t``.

    ``power_at`` must be deterministic in ``t``.  A load may declare ``step_s`` (int
    seconds, or None for constant power): its power is constant within each step of
    that length counted from the Unix epoch.  A load without the attribute is taken
    to change every second.
    """

    def power_at(self, t: datetime) -> int: ...


def _epoch_s(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(seconds=1)


@dataclass(frozen=True)
class ConstantLoad:
    """Constant power."""

    watts: int
    step_s: int | None = field(default=None, init=False)

    def power_at(self, t: datetime) -> int:
        return self.watts


def _mix(seed: int, n: int) -> int:
    """splitmix64 of (seed, n): a fast, process-independent hash."""
    z = (seed * 0x9E3779B97F4A7C15 + n * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return z ^ (z >> 31)


@dataclass(frozen=True)
class RandomLoad:
    """Seeded random power, constant within each minute: mean ± spread (uniform).

    A load with a non-negative mean never goes below 0 W.
    """

    mean_watts: int
    seed: int
    spread_watts: int = 200
    step_s: int | None = field(default=60, init=False)

    def power_at(self, t: datetime) -> int:
        minute = _epoch_s(t) // 60
        span = 2 * self.spread_watts + 1
        watts = self.mean_watts - self.spread_watts + _mix(self.seed, minute) % span
        return max(watts, 0) if self.mean_watts >= 0 else watts


@dataclass(frozen=True)
class DailyCurveLoad:
    """A daily curve: (minute of the local day, W) points, linear between them.

    The curve wraps around midnight; power is constant within each minute (the value
    at the minute's start, rounded down).
    """

    points: tuple[tuple[int, int], ...]
    tz: str = "Asia/Shanghai"
    step_s: int | None = field(default=60, init=False)

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a daily curve needs at least one point")
        minutes = [m for m, _ in self.points]
        if any(not 0 <= m < 1440 for m in minutes) or len(set(minutes)) != len(minutes):
            raise ValueError("daily curve minutes must be distinct and in 0..1439")
        object.__setattr__(self, "points", tuple(sorted(self.points)))
        object.__setattr__(self, "_zone", ZoneInfo(self.tz))

    def power_at(self, t: datetime) -> int:
        local = t.astimezone(self._zone)  # type: ignore[attr-defined]
        m = local.hour * 60 + local.minute
        pts = self.points
        after = next((i for i, (pm, _) in enumerate(pts) if pm > m), len(pts))
        m0, w0 = pts[after - 1] if after > 0 else (pts[-1][0] - 1440, pts[-1][1])
        m1, w1 = pts[after] if after < len(pts) else (pts[0][0] + 1440, pts[0][1])
        if m1 == m0:
            return w0
        return w0 + (w1 - w0) * (m - m0) // (m1 - m0)


def make_load(kind: str, **params: Any) -> Load:
    """Build a load from config: ``constant`` (watts), ``random`` (mean_watts, seed,
    spread_watts), ``daily`` (points: [[minute, W], ...], tz).  Bad input: ValueError."""
    load: Load
    try:
        if kind == "constant":
            load = ConstantLoad(int(params.pop("watts")))
        elif kind == "random":
            spread = int(params.pop("spread_watts", 200))
            if spread < 0:
                raise ValueError("spread_watts must be >= 0")
            load = RandomLoad(int(params.pop("mean_watts")), int(params.pop("seed")), spread)
        elif kind == "daily":
            points = tuple((int(m), int(w)) for m, w in params.pop("points"))
            load = DailyCurveLoad(points, str(params.pop("tz", "Asia/Shanghai")))
        else:
            raise ValueError(f"unknown load kind {kind!r} (constant, random, daily)")
    except KeyError as exc:
        raise ValueError(f"load {kind!r} needs {exc.args[0]!r}") from None
    except (TypeError, ZoneInfoNotFoundError) as exc:
        raise ValueError(f"load {kind!r}: {exc}") from None
    if params:
        raise ValueError(f"load {kind!r} has no parameter {sorted(params)[0]!r}")
    return load


@dataclass(frozen=True)
class Freeze:
    """A frozen copy of the energy registers, at the meter's own time ``at`` (local)."""

    at: datetime
    import_wh: int
    tariff_wh: tuple[int, int, int, int]
    export_wh: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "import_wh": self.import_wh,
            "tariff_wh": list(self.tariff_wh),
            "export_wh": self.export_wh,
        }


class MeterPhysics:
    """One meter's registers and clock, integrated from its load.

    Call :meth:`advance` with the shared clock's ``now`` before reading the
    attributes; they hold the state at the last advance.  Without a slot table all
    import energy goes to tariff 1.  Each register wraps at ``register_wrap_wh``
    independently, so tariffs sum to import modulo the wrap.
    """

    def __init__(
        self,
        *,
        meter_number: str,
        load: Load,
        now: datetime,
        energy_import_wh: int = 0,
        energy_export_wh: int = 0,
        phases: int = 1,
        voltage_dv: int = 2200,
        frequency_chz: int = 5000,
        power_factor_milli: int = 980,
        drift_ppm: int = 0,
        clock_offset_s: float = 0.0,
        tou_slots: Sequence[tuple[time, int]] | None = None,
        settlement_day: int = 1,
        register_wrap_wh: int = 1_000_000_000,
        has_relay: bool = True,
        timezone: str = "Asia/Shanghai",
    ) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        if not 1 <= settlement_day <= 28:
            raise ValueError("settlement_day must be 1..28")
        if drift_ppm <= -1_000_000:
            raise ValueError("drift_ppm must be > -1000000")
        if not 0 < power_factor_milli <= 1000 or voltage_dv <= 0:
            raise ValueError("power factor must be 1..1000 milli and voltage positive")
        self.meter_number = meter_number
        self.load = load
        self.phases = phases
        self.voltage_dv = voltage_dv
        self.frequency_chz = frequency_chz
        self.power_factor_milli = power_factor_milli
        self.settlement_day = settlement_day
        self.register_wrap_wh = register_wrap_wh
        self.has_relay = has_relay
        self.tz: tzinfo = ZoneInfo(timezone)
        self.tou_slots: tuple[tuple[time, int], ...] = _check_slots(tou_slots)
        self.energy_import_wh = energy_import_wh % register_wrap_wh
        self.energy_export_wh = energy_export_wh % register_wrap_wh
        self.tariff_wh: list[int] = [self.energy_import_wh, 0, 0, 0]
        self._rem_import_uj = 0
        self._rem_export_uj = 0
        #: energy integrated since construction (Wh), never wrapped nor reset by a swap
        self.total_import_wh = 0
        self.total_export_wh = 0
        #: called with the instant before the relay or the meter changes (area gates)
        self.listeners: list[Callable[[datetime], None]] = []
        self.relay_closed = True
        self.daily_freezes: list[Freeze] = []
        self.settlement_freezes: list[Freeze] = []
        self._t = now.astimezone(UTC)
        self.drift_ppm = drift_ppm
        self._ref = self._t
        self._offset_us = round(clock_offset_s * 1_000_000)
        self._next_boundary: datetime | None = None
        self._meter_day: date = self.meter_time(self._t).date()
        self.power_w = 0
        self.current_ma = 0
        self._set_power(self._power(self._t))

    # --- clock --------------------------------------------------------------------

    def _meter_utc(self, t: datetime) -> datetime:
        elapsed_us = (t - self._ref) // _US
        return t + timedelta(
            microseconds=self._offset_us + elapsed_us * self.drift_ppm // 1_000_000
        )

    def meter_time(self, now: datetime) -> datetime:
        """The meter's own clock at ``now`` (offset + drift), in its local zone."""
        return self._meter_utc(now.astimezone(UTC)).astimezone(self.tz)

    @property
    def clock_offset_s(self) -> float:
        """The meter clock's offset at the last advance, seconds (+ = ahead)."""
        return (self._meter_utc(self._t) - self._t) / timedelta(seconds=1)

    def set_meter_time(self, now: datetime, meter_time: datetime) -> None:
        """Set the meter's clock (a time write or broadcast).  No freeze is taken for
        a midnight jumped over."""
        self.advance(now)
        if meter_time.tzinfo is None:
            meter_time = meter_time.replace(tzinfo=self.tz)
        self._ref = self._t
        self._offset_us = (meter_time - self._t) // _US
        self._clock_changed()

    def set_drift(
        self, now: datetime, drift_ppm: int | None = None, offset_s: float | None = None
    ) -> None:
        """Change the clock's drift (from now on) and/or its offset (now)."""
        self.advance(now)
        current = (self._meter_utc(self._t) - self._t) // _US
        if drift_ppm is not None:
            if drift_ppm <= -1_000_000:
                raise ValueError("drift_ppm must be > -1000000")
            self.drift_ppm = drift_ppm
        self._ref = self._t
        self._offset_us = current if offset_s is None else round(offset_s * 1_000_000)
        self._clock_changed()

    def _clock_changed(self) -> None:
        self._next_boundary = None
        self._meter_day = self.meter_time(self._t).date()

    def _real_for_meter(self, target: datetime) -> datetime:
        """The first real instant at which the meter's clock reads >= ``target``."""
        wanted_us = (target - self._ref) // _US - self._offset_us
        elapsed = -((-wanted_us * 1_000_000) // (1_000_000 + self.drift_ppm))
        t = self._ref + timedelta(microseconds=elapsed)
        while self._meter_utc(t) < target:
            t += _US
        while self._meter_utc(t - _US) >= target:
            t -= _US
        return t

    def _meter_boundary(self) -> datetime:
        """Real instant of the next tariff slot start or meter midnight after ``_t``."""
        if self._next_boundary is None or self._next_boundary <= self._t:
            mt = self.meter_time(self._t)
            day = mt.date()
            candidates = [datetime.combine(day + timedelta(days=1), time(0), self.tz)]
            for start, _ in self.tou_slots:
                for d in (day, day + timedelta(days=1)):
                    at = datetime.combine(d, start, self.tz)
                    if at > mt:
                        candidates.append(at)
                        break
            self._next_boundary = self._real_for_meter(min(candidates))
        return self._next_boundary

    def tariff_at(self, meter_local: datetime) -> int:
        """Tariff (1..4) of the slot the meter's local time falls in."""
        if not self.tou_slots:
            return 1
        now = meter_local.time().replace(tzinfo=None)
        current = self.tou_slots[-1][1]
        for start, tariff in self.tou_slots:
            if start <= now:
                current = tariff
        return current

    # --- integration --------------------------------------------------------------

    def _power(self, t: datetime) -> int:
        return self.load.power_at(t) if self.relay_closed else 0

    def _grid_end(self, t: datetime) -> datetime | None:
        step = getattr(self.load, "step_s", 1)
        if step is None:
            return None
        s = _epoch_s(t)
        return _EPOCH + timedelta(seconds=(s // step + 1) * step)

    def advance(self, now: datetime) -> None:
        """Integrate energy up to ``now``; take freezes at the meter's own 00:00.

        ``now`` before the last advance is ignored (time never runs backwards here).
        """
        now = now.astimezone(UTC)
        while self._t < now:
            end = now
            grid = self._grid_end(self._t)
            if grid is not None and grid < end:
                end = grid
            boundary = self._meter_boundary()
            if boundary < end:
                end = boundary
            tariff = self.tariff_at(self.meter_time(self._t))
            self._integrate(self._power(self._t), (end - self._t) // _US, tariff)
            self._t = end
            if end == boundary:
                self._next_boundary = None
                day = self.meter_time(end).date()
                if day > self._meter_day:
                    self._meter_day = day
                    self._freeze(day)
        self._set_power(self._power(self._t))

    def _integrate(self, watts: int, us: int, tariff: int) -> None:
        wrap = self.register_wrap_wh
        if watts > 0:
            self._rem_import_uj += watts * us
            whole, self._rem_import_uj = divmod(self._rem_import_uj, UJ_PER_WH)
            if whole:
                self.total_import_wh += whole
                self.energy_import_wh = (self.energy_import_wh + whole) % wrap
                self.tariff_wh[tariff - 1] = (self.tariff_wh[tariff - 1] + whole) % wrap
        elif watts < 0:
            self._rem_export_uj += -watts * us
            whole, self._rem_export_uj = divmod(self._rem_export_uj, UJ_PER_WH)
            self.energy_export_wh = (self.energy_export_wh + whole) % wrap
            self.total_export_wh += whole

    def _set_power(self, watts: int) -> None:
        self.power_w = watts
        denominator = self.phases * self.voltage_dv * self.power_factor_milli
        magnitude = abs(watts) * 10_000_000 // denominator
        self.current_ma = magnitude if watts >= 0 else -magnitude  # truncated toward 0

    def _snapshot(self, at: datetime) -> Freeze:
        return Freeze(
            at=at,
            import_wh=self.energy_import_wh,
            tariff_wh=(self.tariff_wh[0], self.tariff_wh[1], self.tariff_wh[2], self.tariff_wh[3]),
            export_wh=self.energy_export_wh,
        )

    def _freeze(self, day: date) -> None:
        snap = self._snapshot(datetime.combine(day, time(0), self.tz))
        self.daily_freezes.insert(0, snap)
        del self.daily_freezes[DAILY_HISTORY:]
        if day.day == self.settlement_day:
            self.settlement_freezes.insert(0, snap)
            del self.settlement_freezes[SETTLEMENT_HISTORY:]

    def freeze_now(self, now: datetime) -> Freeze:
        """An instant freeze (DL/T 645 code 16 'now'): returned, not stored as daily."""
        self.advance(now)
        return self._snapshot(self.meter_time(self._t).replace(second=0, microsecond=0))

    # --- relay and lifecycle ------------------------------------------------------

    def open_relay(self, now: datetime | None = None) -> None:
        """Open the relay (integrating up to ``now`` first, if given): power 0."""
        if not self.has_relay:
            raise ValueError(f"meter {self.meter_number} has no relay")
        if now is not None:
            self.advance(now)
        self._notify()
        self.relay_closed = False
        self._set_power(0)

    def close_relay(self, now: datetime | None = None) -> None:
        """Close the relay (integrating up to ``now`` first, if given)."""
        if not self.has_relay:
            raise ValueError(f"meter {self.meter_number} has no relay")
        if now is not None:
            self.advance(now)
        self._notify()
        self.relay_closed = True
        self._set_power(self._power(self._t))

    def swap(
        self,
        now: datetime,
        meter_number: str,
        energy_import_wh: int,
        *,
        energy_export_wh: int = 0,
        tariff_wh: Sequence[int] | None = None,
    ) -> None:
        """A different meter is installed: new number and registers, no history.

        Its tariff registers default to all import energy in tariff 1.
        """
        self.advance(now)
        self._notify()
        wrap = self.register_wrap_wh
        self.meter_number = meter_number
        self.energy_import_wh = energy_import_wh % wrap
        self.energy_export_wh = energy_export_wh % wrap
        if tariff_wh is None:
            self.tariff_wh = [self.energy_import_wh, 0, 0, 0]
        else:
            if len(tariff_wh) != 4:
                raise ValueError("tariff_wh needs 4 registers")
            self.tariff_wh = [v % wrap for v in tariff_wh]
        self._rem_import_uj = self._rem_export_uj = 0
        self.daily_freezes = []
        self.settlement_freezes = []
        self.relay_closed = True
        self._set_power(self._power(self._t))

    def _notify(self) -> None:
        for listener in self.listeners:
            listener(self._t)

    @property
    def now(self) -> datetime:
        """The instant (UTC) the registers were last advanced to."""
        return self._t

    def truth(self, now: datetime) -> dict[str, Any]:
        """Ground truth at ``now`` (advancing first), JSON-able, integer units."""
        self.advance(now)
        return {
            "meter_number": self.meter_number,
            "energy_import_wh": self.energy_import_wh,
            "energy_export_wh": self.energy_export_wh,
            "tariff_wh": list(self.tariff_wh),
            "total_import_wh": self.total_import_wh,
            "total_export_wh": self.total_export_wh,
            "power_w": self.power_w,
            "voltage_dv": self.voltage_dv,
            "current_ma": self.current_ma,
            "frequency_chz": self.frequency_chz,
            "power_factor_milli": self.power_factor_milli,
            "phases": self.phases,
            "has_relay": self.has_relay,
            "relay_closed": self.relay_closed,
            "meter_time": self.meter_time(self._t).isoformat(),
            "clock_offset_s": self.clock_offset_s,
            "drift_ppm": self.drift_ppm,
            "daily_freezes": [f.as_dict() for f in self.daily_freezes],
            "settlement_freezes": [f.as_dict() for f in self.settlement_freezes],
        }


def _check_slots(slots: Sequence[tuple[time, int]] | None) -> tuple[tuple[time, int], ...]:
    if not slots:
        return ()
    out = tuple(sorted((start.replace(tzinfo=None), int(tariff)) for start, tariff in slots))
    if any(not 1 <= tariff <= 4 for _, tariff in out):
        raise ValueError("tariffs are 1..4")
    if len({start for start, _ in out}) != len(out):
        raise ValueError("two slots start at the same time")
    return out
