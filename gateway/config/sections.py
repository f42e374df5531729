"""Readers of the configuration's sections: YAML nodes in, model objects out.

Each ``read_*`` function records every problem it finds on the :class:`Reader` and
returns its object only when the section is right (``None`` otherwise), together with
the section's :class:`MapReader` so that references can be located later.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime, time
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import cast
from zoneinfo import ZoneInfo

from yaml.nodes import Node, ScalarNode, SequenceNode

from gateway.config.control import local_date, read_thresholds
from gateway.config.model import (
    BAUD_RATES,
    Account,
    AccountType,
    Console,
    FlatTariff,
    Meter,
    Parity,
    Polling,
    Protocol,
    SerialBus,
    Store,
    ThresholdsConfig,
    TieredTariff,
    TouSlot,
    TouTariff,
    Uplink,
)
from gateway.yamlloc import (
    Invalid,
    MapReader,
    Reader,
    boolean,
    choice,
    describe,
    hhmm,
    identifier,
    integer,
    number,
    optional,
    string,
)

__all__ = [
    "Item",
    "baud_rate",
    "digits",
    "meter_address",
    "read_account",
    "read_bus",
    "read_console",
    "read_gateway_id",
    "read_meter",
    "read_store",
    "read_tariff",
    "read_timezone",
    "read_uplink",
]

_LINE_DEFAULTS: dict[str, tuple[int, str]] = {"dlt645": (2400, "E"), "modbus": (9600, "N")}
_MAX_PRICE = 1_000_000  # 100 yuan/kWh: anything above is a typo
_MIB = 1024 * 1024

# -- converters -----------------------------------------------------------------------------

_GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PREFIX = re.compile(r"[^/+#\s]+(/[^/+#\s]+)*")


def read_gateway_id(node: Node) -> str:
    text = identifier(node)
    if not _GATEWAY_ID.fullmatch(text):
        raise Invalid(f"must be letters, digits, '-', '_' or '.' (at most 64), not {text!r}")
    return text


def read_timezone(node: Node) -> str:
    text = string(node)
    try:
        ZoneInfo(text)
    except (ValueError, KeyError, OSError):
        raise Invalid(f"unknown time zone {text!r} (an IANA name like Asia/Shanghai)") from None
    return text


def _prefix(node: Node) -> str:
    text = string(node)
    if not _PREFIX.fullmatch(text):
        raise Invalid(f"must be topic levels without '+', '#', spaces or empty levels: {text!r}")
    return text


def baud_rate(node: Node) -> int:
    value = integer()(node)
    if value not in BAUD_RATES:
        raise Invalid(f"must be one of {', '.join(map(str, BAUD_RATES))}, not {value}")
    return value


def _price(node: Node) -> int:
    """An integer price in 0.0001 yuan/kWh; ``0.5`` or ``"0.5"`` is a located error."""
    if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:int":
        return integer(0, _MAX_PRICE)(node)
    hint = ""
    if isinstance(node, ScalarNode):
        try:
            scaled = Decimal(node.value.strip()) * 10000
            if scaled.is_finite() and scaled == scaled.to_integral_value() and scaled >= 0:
                hint = f"; {node.value.strip()} yuan/kWh is written {int(scaled)}"
        except InvalidOperation:
            pass
    raise Invalid(f"prices must be integers in 0.0001 yuan/kWh{hint} (got {describe(node)})")


def digits(n: int, what: str) -> Callable[[Node], str]:
    """A string of exactly ``n`` decimal digits (an unquoted number is refused: zeros lost)."""

    def conv(node: Node) -> str:
        if isinstance(node, ScalarNode) and node.tag == "tag:yaml.org,2002:int":
            raise Invalid(
                f'write the {what} in quotes, like "{node.value.zfill(n)[-n:]}": '
                "unquoted, YAML reads it as a number and leading zeros are lost"
            )
        text = string(node)
        if len(text) != n or not text.isdigit() or not text.isascii():
            raise Invalid(f"must be {n} decimal digits, not {text!r}")
        return text

    return conv


def meter_address(node: Node) -> str:
    """A DL/T 645 meter address: 12 digits, quoted, not the broadcast address."""
    text = digits(12, "address")(node)
    if text == "999999999999":
        raise Invalid("999999999999 is the broadcast address, not a meter's")
    return text


def _datetime(node: Node) -> datetime:
    if not isinstance(node, ScalarNode) or node.tag not in (
        "tag:yaml.org,2002:str",
        "tag:yaml.org,2002:timestamp",
    ):
        raise Invalid(f"must be an ISO-8601 time, not {describe(node)}")
    example = "like 2024-07-01T00:00:00+08:00"
    try:
        value = datetime.fromisoformat(node.value)
    except ValueError:
        raise Invalid(f"must be an ISO-8601 time {example}, not {node.value!r}") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise Invalid(f"needs a UTC offset, {example}")
    return value


def _ints_increasing(node: Node) -> tuple[int, ...]:
    if not isinstance(node, SequenceNode):
        raise Invalid(f"must be a list of integers (Wh), not {describe(node)}")
    values: list[int] = []
    for item in node.value:
        try:
            value = integer(1, None)(item)
        except Invalid as exc:
            raise Invalid(exc.message, item) from None
        if values and value <= values[-1]:
            raise Invalid(f"must increase: {value} follows {values[-1]}", item)
        values.append(value)
    if not values:
        raise Invalid("needs at least one threshold")
    return tuple(values)


def _prices_list(node: Node) -> tuple[int, ...]:
    if not isinstance(node, SequenceNode) or not node.value:
        raise Invalid(f"must be a list of prices, not {describe(node)}")
    out: list[int] = []
    for item in node.value:
        try:
            out.append(_price(item))
        except Invalid as exc:
            raise Invalid(exc.message, item) from None
    return tuple(out)


# -- sections -------------------------------------------------------------------------------

Item = tuple[object | None, MapReader]


def _keys(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.name != "kind"]


def read_bus(r: Reader, node: Node) -> Item:
    m = MapReader(r, node, "serial bus")
    name = m.get("name", identifier)
    m.what = f"serial bus {name!r}" if name else m.what
    m.expect(_keys(SerialBus))
    port = m.get("port", string)
    protocol = m.get("protocol", choice("dlt645", "modbus"))
    baud_default, parity_default = _LINE_DEFAULTS.get(protocol, (2400, "E"))
    baud = m.get("baud", baud_rate, baud_default)
    data_bits = m.get("data_bits", integer(5, 8), 8)
    parity = m.get("parity", choice("N", "E", "O"), parity_default)
    stop_bits = m.get("stop_bits", integer(1, 2), 1)
    timeout = m.get("timeout", optional(number(0.01, 60.0)), None)
    retries = m.get("retries", optional(integer(0, 10)), None)
    if not m.ok:
        return None, m
    line = cast(Parity, parity)
    return SerialBus(
        name, port, cast(Protocol, protocol), baud, data_bits, line, stop_bits, timeout, retries
    ), m


def read_meter(r: Reader, node: Node) -> Item:
    m = MapReader(r, node, "meter")
    meter_id = m.get("id", identifier)
    m.what = f"meter {meter_id!r}" if meter_id else m.what
    m.expect(_keys(Meter))
    values = {
        "id": meter_id,
        "bus": m.get("bus", identifier),
        "name": m.get("name", string, meter_id or ""),
        "address": m.get("address", meter_address, None),
        "unit_id": m.get("unit_id", integer(1, 247), None),
        "profile": m.get("profile", identifier, None),
        "ct_ratio": m.get("ct_ratio", integer(1, 100_000), 1),
        "pt_ratio": m.get("pt_ratio", integer(1, 10_000), 1),
        "account": m.get("account", optional(identifier), None),
        "area": m.get("area", optional(identifier), None),
        "role": m.get("role", choice("customer", "gate"), "customer"),
        "poll_interval_s": m.get("poll_interval_s", optional(number(0, 86_400)), None),
    }
    if values["role"] == "gate":
        if values["area"] is None and m.ok:
            m.missing("area", " (a gate meter measures the supply of one area)")
        if values["account"] is not None:
            m.blame("account", "account: a gate meter is not billed; remove 'account'")
    return (Meter(**values) if m.ok else None), m  # type: ignore[arg-type]


def read_account(r: Reader, node: Node, thresholds: ThresholdsConfig | None = None) -> Item:
    """An account; keys of its ``thresholds`` not written come from ``thresholds``
    (``billing.thresholds``)."""
    m = MapReader(r, node, "account")
    account_id = m.get("id", identifier)
    m.what = f"account {account_id!r}" if account_id else m.what
    m.expect(_keys(Account))
    kind = m.get("type", choice("prepaid", "postpaid", "unbilled"))
    tariff = m.get("tariff", optional(identifier), None)
    trip = m.get("trip_on_arrears", boolean, kind == "prepaid")
    name = m.get("name", string, account_id or "")
    opened = m.get("opened", optional(local_date), None)
    protect = m.get("protect", boolean, False)
    levels = None
    t_node = m.value_node("thresholds")
    if t_node is not None and t_node.tag != "tag:yaml.org,2002:null":
        levels = read_thresholds(r, t_node, thresholds or ThresholdsConfig())
    if m.ok and tariff is None and kind != "unbilled":
        m.missing("tariff", f" (a {kind} account is charged by a tariff)")
    if m.ok and trip and kind == "unbilled":
        m.blame("trip_on_arrears", "trip_on_arrears: an unbilled account has no arrears")
    if not m.ok:
        return None, m
    kind_ = cast(AccountType, kind)
    return Account(account_id, kind_, tariff, trip, name, opened, protect, levels), m


_TARIFF_KEYS = {"flat": ["price"], "tou": ["slots", "prices"], "tiered": ["thresholds", "prices"]}


def read_tariff(r: Reader, node: Node) -> Item:
    m = MapReader(r, node, "tariff")
    tariff_id = m.get("id", identifier)
    m.what = f"tariff {tariff_id!r}" if tariff_id else m.what
    kind = m.get("kind", choice(*_TARIFF_KEYS))
    common = ["id", "version", "effective", "kind"]
    m.expect(common + _TARIFF_KEYS.get(kind, ["price", "slots", "prices", "thresholds"]))
    version = m.get("version", integer(1, 2**31 - 1))
    effective = m.get("effective", _datetime)
    if kind == "flat":
        price = m.get("price", _price)
        return (FlatTariff(tariff_id, version, effective, price) if m.ok else None), m
    if kind == "tiered":
        thresholds = m.get("thresholds", _ints_increasing)
        prices = m.get("prices", _prices_list)
        if m.ok and len(prices) != len(thresholds) + 1:
            m.blame(
                "prices",
                f"prices: {len(thresholds)} thresholds make {len(thresholds) + 1} tiers, "
                f"so {len(thresholds) + 1} prices are needed, not {len(prices)}",
            )
        return (
            TieredTariff(tariff_id, version, effective, thresholds, prices) if m.ok else None
        ), m
    if kind == "tou":
        slots = _tou_slots(r, m)
        prices_map = _tou_prices(r, m)
        if prices_map is not None:
            for slot, slot_node in slots:
                if slot.slot not in prices_map:
                    r.error(slot_node, f"slot: slot {slot.slot} has no price in 'prices'")
        if not m.ok or prices_map is None:
            return None, m
        table = tuple(s for s, _ in slots)
        return TouTariff(tariff_id, version, effective, table, MappingProxyType(prices_map)), m
    return None, m


def _tou_slots(r: Reader, m: MapReader) -> list[tuple[TouSlot, Node]]:
    """The slot table's well-formed entries with their slot nodes; problems recorded."""
    node = m.value_node("slots")
    if node is None:
        m.missing("slots", " (the daily slot table)")
        return []
    out: list[tuple[TouSlot, Node]] = []
    for item in r.sequence(node, "slots"):
        s = MapReader(r, item, "a slot")
        s.expect(["start", "slot"])
        start, slot = s.get("start", hhmm), s.get("slot", integer(1, 4))
        if not s.ok:
            continue
        start_node = cast(Node, s.value_node("start"))
        if not out and start != time(0, 0):
            r.error(start_node, "start: the first slot must start at 00:00")
        elif out and start <= out[-1][0].start:
            r.error(
                start_node,
                f"start: slots must be in time order; {start:%H:%M} is not after "
                f"{out[-1][0].start:%H:%M}",
            )
            continue
        out.append((TouSlot(start, slot), cast(Node, s.value_node("slot"))))
    if not out and m.ok:
        m.blame("slots", "slots: the slot table is empty")
    return out


def _tou_prices(r: Reader, m: MapReader) -> dict[int, int] | None:
    node = m.value_node("prices")
    if node is None:
        m.missing("prices", " (a price for each slot number)")
        return None
    p = MapReader(r, node, "prices")
    out: dict[int, int] = {}
    for key in p.present():
        if key not in ("1", "2", "3", "4"):
            r.error(
                p.key_node(key),
                f"prices: slot numbers are 1 to 4 (1 sharp 尖, 2 peak 峰, "
                f"3 flat 平, 4 valley 谷), not {key!r}",
            )
            continue
        out[int(key)] = p.get(key, _price)
    return out if p.ok else None


def read_uplink(r: Reader, node: Node, gateway_id: str | None) -> Uplink | None:
    m = MapReader(r, node, "uplink")
    m.expect(_keys(Uplink))
    tls = m.get("tls", boolean, False)
    values = {
        "host": m.get("host", string),
        "port": m.get("port", integer(1, 65535), 8883 if tls else 1883),
        "prefix": m.get("prefix", _prefix, "gw"),
        "client_id": m.get("client_id", string, f"gateway-{gateway_id or 'unnamed'}"),
        "keepalive": m.get("keepalive", integer(0, 65535), 60),
        "tls": tls,
    }
    return Uplink(**values) if m.ok else None  # type: ignore[arg-type]


def read_store(r: Reader, node: Node | None) -> Store | None:
    if node is None or node.tag == "tag:yaml.org,2002:null":
        return Store()
    m = MapReader(r, node, "store")
    m.expect(_keys(Store))
    path = m.get("path", string, Store().path)
    max_bytes = m.get("max_bytes", integer(_MIB, None), Store().max_bytes)
    return Store(path, max_bytes) if m.ok else None


def read_polling(r: Reader, node: Node | None) -> Polling | None:
    d = Polling()
    if node is None or node.tag == "tag:yaml.org,2002:null":
        return d
    m = MapReader(r, node, "polling")
    m.expect(_keys(Polling))
    interval = m.get("interval_s", number(0, 86_400), d.interval_s)
    fail_after = m.get("fail_after", integer(1, 1000), d.fail_after)
    backoff = m.get("backoff_s", number(1, 86_400), d.backoff_s)
    return Polling(interval, fail_after, backoff) if m.ok else None


def read_console(r: Reader, node: Node | None) -> Console | None:
    if node is None or node.tag == "tag:yaml.org,2002:null":
        return Console()
    m = MapReader(r, node, "console")
    m.expect(_keys(Console))
    port = m.get("port", optional(string), None)
    baud = m.get("baud", baud_rate, Console().baud)
    return Console(port, baud) if m.ok else None
