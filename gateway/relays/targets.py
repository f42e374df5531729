"""One meter's relay as the controller sees it: the job that trips or closes it, the job
that reads it back and what that read says, whatever the protocol.

DL/T 645: remote control (1C) trip ``1A``, close-allow ``1B`` or direct close ``1C`` with
a validity deadline in the meter's local time; read back status word 3 bit 4.  Modbus:
the profile's relay (coil or holding register) written off or on, read back from the same
place; a Modbus relay has no close-allow (no button), so ``allow`` closes it directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.config import GatewayConfig, Meter
from gateway.drivers import dlt645, modbus, profiles
from gateway.drivers.jobs import Job, JobResult
from gateway.drivers.profiles import RelaySpec
from gateway.protocols.dlt645 import RelayAction

__all__ = ["RelayTarget", "targets"]


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """The relay of meter ``meter`` (``relay`` is the Modbus profile's, None for DL/T 645)."""

    meter: Meter
    protocol: str
    relay: RelaySpec | None = None

    @property
    def id(self) -> str:
        return self.meter.id

    def command(self, *, open_: bool, allow: bool, valid_until: datetime) -> Job:
        """Trip (``open_``) or close (close-allow when ``allow`` and the meter has a
        button); ``valid_until`` local wall time (DL/T 645 only)."""
        if self.protocol == "dlt645":
            assert self.meter.address is not None
            if open_:
                action = RelayAction.TRIP
            else:
                action = RelayAction.CLOSE_ALLOW if allow else RelayAction.CLOSE
            return dlt645.relay_command(self.id, self.meter.address, action, valid_until)
        assert self.relay is not None and self.meter.unit_id is not None
        return modbus.relay_command(self.id, self.meter.unit_id, self.relay, open_=open_)

    def allows(self, allow: bool) -> bool:
        """Whether a close in ``allow`` mode only permits the tenant's button."""
        return allow and self.protocol == "dlt645"

    def clock_read(self) -> Job | None:
        """The read of the meter's clock (DL/T 645: deadlines are checked against it)."""
        return dlt645.meter_clock_read(self.id) if self.protocol == "dlt645" else None

    def clock(self, result: JobResult) -> datetime | None:
        """The meter's local wall time (naive) from a :meth:`clock_read` result."""
        return dlt645.meter_clock(result)

    def readback(self) -> Job:
        if self.protocol == "dlt645":
            return dlt645.relay_readback(self.id)
        assert self.relay is not None and self.meter.unit_id is not None
        return modbus.relay_readback(self.id, self.meter.unit_id, self.relay)

    def is_open(self, result: JobResult) -> bool | None:
        """True tripped, False closed, None unknown (from a :meth:`readback` result)."""
        if self.protocol == "dlt645":
            return dlt645.relay_position(result)
        assert self.relay is not None
        return modbus.relay_position(result, self.relay)


def targets(config: GatewayConfig) -> dict[str, RelayTarget]:
    """Every meter with a relay: all DL/T 645 meters, Modbus meters whose profile has one."""
    buses = {b.name: b for b in config.serial_buses}
    out: dict[str, RelayTarget] = {}
    for meter in config.meters:
        bus = buses.get(meter.bus)
        if bus is None:
            continue
        if bus.protocol == "dlt645":
            out[meter.id] = RelayTarget(meter, "dlt645")
        elif meter.profile is not None:
            relay = profiles.get(meter.profile).relay
            if relay is not None:
                out[meter.id] = RelayTarget(meter, "modbus", relay)
    return out
