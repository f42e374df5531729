"""Typed gateway configuration: one YAML file describes one gateway.

::

    cfg = load_config("/etc/gateway/gateway.yaml")     # -> GatewayConfig (frozen)

Any mistake (YAML syntax, unknown or duplicate key, wrong type, value out of range,
duplicate meter, dangling reference, unknown Modbus profile) raises
:class:`~gateway.errors.ConfigError` located at the offending key or value
(``file:line:column``, 1-based); its ``errors`` lists every problem found.  Nothing
starts on a bad file.  Money is integer 0.0001 yuan, energy integer Wh: a price
written ``0.5`` is an error, ``5000`` is right.  The packaged example
(:func:`example_config_path`) shows and explains every key.

Layout: :mod:`~gateway.config.model` (the dataclasses), :mod:`~gateway.config.sections`
(one reader per section), :mod:`~gateway.config.references` (checks across sections);
located YAML itself is :mod:`gateway.yamlloc`.
"""

from __future__ import annotations

import os
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import cast

from yaml.nodes import Node

from gateway.clock import DEFAULT_TIMEZONE
from gateway.config.control import (
    check_control,
    read_billing,
    read_commands,
    read_relays,
)
from gateway.config.model import (
    BAUD_RATES,
    Account,
    Billing,
    Commands,
    Console,
    FlatTariff,
    GatewayConfig,
    Meter,
    Polling,
    Relays,
    SerialBus,
    Store,
    Tariff,
    ThresholdsConfig,
    TieredTariff,
    TouSlot,
    TouTariff,
    Uplink,
)
from gateway.config.references import check_references
from gateway.config.sections import (
    read_account,
    read_bus,
    read_console,
    read_gateway_id,
    read_meter,
    read_polling,
    read_store,
    read_tariff,
    read_timezone,
    read_uplink,
)
from gateway.errors import ConfigError
from gateway.yamlloc import MapReader, Reader, read_file

__all__ = [
    "BAUD_RATES",
    "Account",
    "Billing",
    "Commands",
    "ConfigError",
    "Console",
    "FlatTariff",
    "GatewayConfig",
    "Meter",
    "Polling",
    "Relays",
    "SerialBus",
    "Store",
    "Tariff",
    "ThresholdsConfig",
    "TieredTariff",
    "TouSlot",
    "TouTariff",
    "Uplink",
    "example_config_path",
    "load_config",
    "parse_config",
]

# -- API ------------------------------------------------------------------------------------


def example_config_path() -> Path:
    """The packaged example configuration (also the demo's default)."""
    return Path(str(resources.files("gateway") / "examples" / "gateway.yaml"))


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and check a configuration file."""
    text, name = read_file(path)
    return parse_config(text, name)


def parse_config(text: str, filename: str = "<string>") -> GatewayConfig:
    """Check configuration text; ``filename`` is only used in messages."""
    r = Reader(filename)
    root = r.compose(text)
    if root is None:
        r.check()
    top = MapReader(r, cast(Node, root), "the configuration")
    if not top.ok:
        r.check()
    top.expect([f.name for f in fields(GatewayConfig) if f.name != "source"])
    gateway_id = top.get("gateway_id", read_gateway_id)
    timezone = top.get("timezone", read_timezone, DEFAULT_TIMEZONE)
    if top.value_node("serial_buses") is None:
        top.missing("serial_buses")
    buses = [read_bus(r, n) for n in r.sequence(top.value_node("serial_buses"), "serial_buses")]
    if top.value_node("serial_buses") is not None and not buses and top.ok:
        top.blame("serial_buses", "serial_buses: a gateway needs at least one bus")
    meters = [read_meter(r, n) for n in r.sequence(top.value_node("meters"), "meters")]
    billing = read_billing(r, top.value_node("billing"))
    levels = billing[0].thresholds if isinstance(billing[0], Billing) else ThresholdsConfig()
    accounts = [
        read_account(r, n, levels) for n in r.sequence(top.value_node("accounts"), "accounts")
    ]
    tariffs = [read_tariff(r, n) for n in r.sequence(top.value_node("tariffs"), "tariffs")]
    uplink = None
    if top.value_node("uplink") is None:
        top.missing("uplink")
    else:
        uplink = read_uplink(r, cast(Node, top.value_node("uplink")), gateway_id)
    store = read_store(r, top.value_node("store"))
    console = read_console(r, top.value_node("console"))
    polling = read_polling(r, top.value_node("polling"))
    relays = read_relays(r, top.value_node("relays"))
    base_dir = Path(filename).parent if not filename.startswith("<") else Path.cwd()
    commands = read_commands(r, top.value_node("commands"), base_dir)
    check_references(r, buses, meters, accounts, tariffs)
    check_control(r, billing, buses, meters, accounts, tariffs)
    r.check()
    return GatewayConfig(
        gateway_id=gateway_id,
        timezone=timezone,
        serial_buses=tuple(cast(SerialBus, b) for b, _ in buses),
        meters=tuple(cast(Meter, m) for m, _ in meters),
        accounts=tuple(cast(Account, a) for a, _ in accounts),
        tariffs=tuple(cast(Tariff, t) for t, _ in tariffs),
        uplink=cast(Uplink, uplink),
        store=cast(Store, store),
        console=cast(Console, console),
        polling=cast(Polling, polling),
        billing=cast(Billing, billing[0]),
        relays=cast(Relays, relays),
        commands=cast(Commands, commands),
        source=filename,
    )
