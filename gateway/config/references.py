"""Checks across sections: unique ids and addresses, and every reference resolvable.

Runs after the sections are read.  Names are collected from every item that declares
one, even an item with other errors, so one mistake does not cascade into "unknown
bus" errors elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from typing import cast

from yaml.nodes import Node, ScalarNode

from gateway.config.model import (
    Account,
    FlatTariff,
    Meter,
    SerialBus,
    Tariff,
    TieredTariff,
    TouTariff,
)
from gateway.config.sections import Item
from gateway.yamlloc import MapReader, Reader, suggest

__all__ = ["check_references"]

# -- references between sections ------------------------------------------------------------


def _names(
    r: Reader, items: list[Item], key: str, what: str, unique: bool = True
) -> dict[str, Node]:
    """Declared ids (even of items with other errors); duplicates reported if ``unique``."""
    seen: dict[str, Node] = {}
    for _, m in items:
        node = m.value_node(key)
        if not isinstance(node, ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            continue
        if node.value in seen and unique:
            first = seen[node.value].start_mark.line + 1
            r.error(node, f"duplicate {what} {key} {node.value!r} (first at line {first})")
        else:
            seen[node.value] = node
    return seen


def _reference(
    m: MapReader, key: str, value: str | None, known: Mapping[str, object], what: str
) -> bool:
    if value is None or value in known:
        return True
    listed = ", ".join(sorted(known)) or "none defined"
    m.blame(key, f"{key}: unknown {what} {value!r}{suggest(value, known)} (known: {listed})")
    return False


def check_references(
    r: Reader,
    buses: list[Item],
    meters: list[Item],
    accounts: list[Item],
    tariffs: list[Item],
) -> None:
    bus_names = _names(r, buses, "name", "bus")
    _names(r, meters, "id", "meter")
    account_ids = _names(r, accounts, "id", "account")
    bus_by_name = {b.name: b for b, _ in buses if isinstance(b, SerialBus)}
    ports: dict[str, Node] = {}
    for b, m in buses:
        if isinstance(b, SerialBus):
            if b.port in ports:
                first = ports[b.port].start_mark.line + 1
                m.blame("port", f"port: {b.port} is already used by another bus (line {first})")
            ports.setdefault(b.port, cast(Node, m.value_node("port")))
    tariff_ids = _names(r, tariffs, "id", "tariff", unique=False)
    _check_versions(tariffs)
    for a, m in accounts:
        if isinstance(a, Account):
            _reference(m, "tariff", a.tariff, tariff_ids, "tariff")
    seen_addresses: dict[tuple[str, str | int], Node] = {}
    profiles: list[str] | None = None
    for meter, m in meters:
        if not isinstance(meter, Meter):
            continue
        _reference(m, "account", meter.account, account_ids, "account")
        if not _reference(m, "bus", meter.bus, bus_names, "bus"):
            continue
        bus = bus_by_name.get(meter.bus)
        if bus is None:
            continue  # the bus itself is wrong, and reported
        if bus.protocol == "dlt645":
            _protocol_fields(m, bus, meter.address, "address", ["unit_id", "profile"])
            where: tuple[str, str | int] | None = (
                (bus.name, meter.address) if meter.address else None
            )
            addr_key = "address"
        else:
            _protocol_fields(m, bus, meter.unit_id, "unit_id", ["address"])
            if meter.profile is None:
                m.missing(
                    "profile", f" (meters on modbus bus {bus.name!r} need a register profile)"
                )
            else:
                if profiles is None:
                    from gateway.drivers.profiles import names

                    profiles = list(names())
                _reference(m, "profile", meter.profile, dict.fromkeys(profiles), "profile")
            where = (bus.name, meter.unit_id) if meter.unit_id is not None else None
            addr_key = "unit_id"
        if where is not None:
            if where in seen_addresses:
                first = seen_addresses[where].start_mark.line + 1
                m.blame(
                    addr_key,
                    f"{addr_key}: {where[1]} is already used on bus {bus.name!r} (line {first})",
                )
            else:
                seen_addresses[where] = cast(Node, m.value_node(addr_key))


def _protocol_fields(
    m: MapReader, bus: SerialBus, value: object, needed: str, foreign: list[str]
) -> None:
    if value is None:
        m.missing(needed, f" (meters on {bus.protocol} bus {bus.name!r} need it)")
    for key in foreign:
        if m.key_node(key) is not None:
            other = "modbus" if bus.protocol == "dlt645" else "dlt645"
            message = f"{key} is for {other} meters, and bus {bus.name!r} speaks {bus.protocol}"
            m.reader.error(m.key_node(key), message)


def _check_versions(tariffs: list[Item]) -> None:
    """Versions of one tariff id are unique and take effect in version order."""
    by_id: dict[str, list[tuple[Tariff, MapReader]]] = {}
    for t, m in tariffs:
        if isinstance(t, FlatTariff | TouTariff | TieredTariff):
            by_id.setdefault(t.id, []).append((t, m))
    for tariff_id, versions in by_id.items():
        versions.sort(key=lambda pair: pair[0].version)
        for (prev, prev_m), (t, m) in pairwise(versions):
            prev_line = cast(Node, prev_m.value_node("version")).start_mark.line + 1
            if t.version == prev.version:
                m.blame(
                    "version",
                    f"version: tariff {tariff_id!r} version {t.version} is already defined "
                    f"(line {prev_line})",
                )
            elif t.effective <= prev.effective:
                m.blame(
                    "effective",
                    f"effective: version {t.version} of tariff {tariff_id!r} must take effect "
                    f"after version {prev.version} (line {prev_line})",
                )
