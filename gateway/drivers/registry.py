"""Meter drivers by protocol name, imported only when a bus needs them.

The built-in table :data:`DRIVERS` maps a bus's ``protocol`` to ``"module:Class"``;
other packages add drivers through the entry-point group ``gateway.drivers``
(``name = "package.module:Class"``), as python-can does for its interfaces.  The
table wins over an entry point of the same name.  Nothing is imported until
:func:`driver_class` asks for it, so a DL/T 645-only gateway never loads pymodbus.

Not yet done: the configuration accepts only the built-in protocol names for a bus
(the meters' fields, relays, tasks and time sync know only DL/T 645 and Modbus), so a
plugin driver is reachable through this registry, not yet from a gateway's YAML.
"""

from __future__ import annotations

import importlib

from gateway.config import Meter, SerialBus
from gateway.drivers.base import MeterDriver
from gateway.errors import ConfigError

__all__ = ["DRIVERS", "ENTRY_POINT_GROUP", "available", "driver_class", "make_driver"]

DRIVERS: dict[str, str] = {
    "dlt645": "gateway.drivers.dlt645:Dlt645Driver",
    "modbus": "gateway.drivers.modbus:ModbusDriver",
}
"""Built-in drivers: protocol -> ``module:Class``."""

ENTRY_POINT_GROUP = "gateway.drivers"

_loaded: dict[str, type[MeterDriver]] = {}


def _plugins() -> dict[str, str]:
    from importlib.metadata import entry_points  # ~5 MB of RSS: only when asked

    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Every protocol name a driver is known for (built in or by entry point)."""
    return sorted(set(DRIVERS) | set(_plugins()))


def driver_class(protocol: str) -> type[MeterDriver]:
    """The driver class for ``protocol``, imported on first use.

    Raises :class:`~gateway.errors.ConfigError` for an unknown name or a target that
    is not a :class:`MeterDriver`.
    """
    cls = _loaded.get(protocol)
    if cls is not None:
        return cls
    target = DRIVERS.get(protocol) or _plugins().get(protocol)
    if target is None:
        raise ConfigError(
            f"no meter driver for protocol {protocol!r}; known: {', '.join(available())}"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        found = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"driver {protocol!r} ({target}) cannot be loaded: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, MeterDriver)):
        raise ConfigError(f"driver {protocol!r} ({target}) is not a MeterDriver")
    _loaded[protocol] = found
    return found


def make_driver(meter: Meter, bus: SerialBus) -> MeterDriver:
    """A driver for ``meter`` on ``bus`` (the bus's protocol picks the class)."""
    return driver_class(bus.protocol)(meter, bus)
