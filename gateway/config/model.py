"""The configuration's typed model: frozen dataclasses, one per YAML section.

Field comments (``#:``) document each key; "YAML default" marks a default that the
reader derives from other keys (a bus's protocol, the gateway id).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from gateway.protocols.linetiming import LineSettings

__all__ = [
    "BAUD_RATES",
    "Account",
    "AccountType",
    "Billing",
    "CloseMode",
    "Commands",
    "Console",
    "FlatTariff",
    "GatewayConfig",
    "Meter",
    "Parity",
    "Polling",
    "Protocol",
    "Relays",
    "Role",
    "SerialBus",
    "Store",
    "Tariff",
    "ThresholdsConfig",
    "TieredTariff",
    "TouSlot",
    "TouTariff",
    "Uplink",
]

Parity = Literal["N", "E", "O"]
Protocol = Literal["dlt645", "modbus"]
Role = Literal["customer", "gate"]
AccountType = Literal["prepaid", "postpaid", "unbilled"]
CloseMode = Literal["allow", "direct"]

BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
"""Baud rates a serial port may be configured with."""

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SerialBus:
    """One RS-485 line: one port, one protocol, owned by one thread."""

    name: str  #: unique name; meters refer to it in ``bus``
    port: str  #: device path (``/dev/ttyUSB0``, a ``/dev/serial/by-path/...`` link, a pty)
    protocol: Protocol  #: ``dlt645`` or ``modbus``: one protocol per line
    baud: int = 2400  #: YAML default: 2400 for dlt645, 9600 for modbus
    data_bits: int = 8  #: 5..8
    parity: Parity = "E"  #: ``N``, ``E`` or ``O``; YAML default: E for dlt645, N for modbus
    stop_bits: int = 1  #: 1 or 2
    timeout: float | None = None  #: seconds to wait for a reply; None: the driver's default
    retries: int | None = None  #: attempts after a failed one (0..10); None: driver's default

    @property
    def line(self) -> LineSettings:
        """The line's framing and speed, for timing calculations."""
        return LineSettings(self.baud, self.data_bits, self.parity, self.stop_bits)


@dataclass(frozen=True, slots=True)
class Meter:
    """One meter on one bus (dlt645: ``address``; modbus: ``unit_id`` and ``profile``)."""

    id: str  #: unique meter id (asset number or a site label)
    bus: str  #: name of its serial bus
    name: str = ""  #: human label; YAML default: the id
    address: str | None = None  #: dlt645: 12-digit address as printed on the nameplate
    unit_id: int | None = None  #: modbus: slave address 1..247
    profile: str | None = None  #: modbus: register profile name (``gateway profile list``)
    ct_ratio: int = 1  #: current-transformer ratio (倍率), e.g. 300/5 A -> 60
    pt_ratio: int = 1  #: voltage-transformer ratio, 1 on low voltage
    account: str | None = None  #: account billed for it; None: unassigned ("red meter")
    area: str | None = None  #: transformer area (台区) it belongs to, for line loss
    role: Role = "customer"  #: ``customer`` (sales) or ``gate`` (关口表: the area's supply)
    poll_interval_s: float | None = None
    """Seconds between polls of this meter (0: as fast as the line allows; also the
    least wait before re-probing it once flagged); None: ``polling.interval_s``."""

    @property
    def ratio(self) -> int:
        """What the meter's registers are multiplied by: CT ratio x PT ratio."""
        return self.ct_ratio * self.pt_ratio


@dataclass(frozen=True, slots=True)
class ThresholdsConfig:
    """Prepaid levels in 0.0001 yuan (``gateway.prepaid.Thresholds.from_config``)."""

    alarm1: int = 200_000  #: balance at or below which alarm 1 is raised (20 yuan)
    alarm2: int = 50_000  #: balance at or below which alarm 2 is raised (<= alarm1)
    overdraft_limit: int = 0  #: how far below zero the balance may go before a trip (>= 0)
    close_allow: int = 0  #: after a trip, the relay may close once the balance exceeds this
    emergency_credit: int = 100_000  #: the most one emergency top-up may grant (>= 0)


@dataclass(frozen=True, slots=True)
class Account:
    """A tenant (or the mall itself): one balance, any number of meters."""

    id: str  #: unique account id
    type: AccountType  #: ``prepaid``, ``postpaid`` or ``unbilled`` (common areas, own use)
    tariff: str | None  #: tariff id; required unless unbilled
    trip_on_arrears: bool  #: trip its meters when the balance runs out; YAML default: prepaid
    name: str = ""  #: tenant name, for reports; YAML default: the id
    opened: date | None = None  #: local date the account opened (tier proration); None: long ago
    protect: bool = False  #: protect mode (保电) at start: trips blocked, charging goes on
    #: per-account levels; None: ``billing.thresholds``.  YAML: keys not written are taken
    #: from ``billing.thresholds``.
    thresholds: ThresholdsConfig | None = None


@dataclass(frozen=True, slots=True)
class FlatTariff:
    """One price at all times."""

    id: str  #: tariff id; several versions may share it
    version: int  #: increases with every change of this tariff
    effective: datetime  #: when this version takes effect (timezone-aware)
    price: int  #: 0.0001 yuan per kWh
    kind: Literal["flat"] = "flat"  #: the YAML ``kind``; tells the tariff classes apart


@dataclass(frozen=True, slots=True)
class TouSlot:
    """From ``start`` (local time) until the next slot's start, tariff ``slot`` applies."""

    start: time  #: local wall time, minutes only
    slot: int  #: 1 sharp (尖), 2 peak (峰), 3 flat (平), 4 valley (谷), as DL/T 645 registers


@dataclass(frozen=True, slots=True)
class TouTariff:
    """Time of use (尖峰平谷): a daily slot table and a price per slot."""

    id: str  #: tariff id
    version: int  #: increases with every change
    effective: datetime  #: when this version takes effect (timezone-aware)
    slots: tuple[TouSlot, ...]  #: first starts at 00:00; starts strictly increase
    prices: Mapping[int, int] = field(hash=False)  #: slot number -> 0.0001 yuan per kWh
    kind: Literal["tou"] = "tou"  #: the YAML ``kind``

    def slot_at(self, local: time) -> int:
        """The slot number in force at a local wall time."""
        starts = [s.start for s in self.slots]
        return self.slots[bisect_right(starts, local.replace(tzinfo=None)) - 1].slot


@dataclass(frozen=True, slots=True)
class TieredTariff:
    """Tiered (阶梯): the price rises with the account's consumption in the billing year."""

    id: str  #: tariff id
    version: int  #: increases with every change
    effective: datetime  #: when this version takes effect (timezone-aware)
    thresholds: tuple[int, ...]  #: yearly consumption (Wh) where each next tier starts
    prices: tuple[int, ...]  #: one price per tier (len(thresholds) + 1), 0.0001 yuan per kWh
    kind: Literal["tiered"] = "tiered"  #: the YAML ``kind``


Tariff = FlatTariff | TouTariff | TieredTariff


@dataclass(frozen=True, slots=True)
class Uplink:
    """The MQTT connection to the master station."""

    host: str  #: broker host name or address
    port: int = 1883  #: YAML default: 8883 with tls, else 1883
    prefix: str = "gw"  #: topic prefix: ``<prefix>/<gateway_id>/up/batch`` ...
    client_id: str = ""  #: MQTT client id; YAML default: ``gateway-<gateway_id>``
    keepalive: int = 60  #: seconds between MQTT pings (0 disables)
    tls: bool = False  #: connect with TLS (system CA store)


@dataclass(frozen=True, slots=True)
class Store:
    """The local SQLite store (journal, outbox, ledger)."""

    path: str = "/var/lib/gateway/gateway.db"  #: database file (relative: to the working dir)
    max_bytes: int = 256 * _MIB  #: size above which acknowledged readings are pruned


@dataclass(frozen=True, slots=True)
class Polling:
    """How the buses poll their meters (every bus of the gateway alike)."""

    interval_s: float = 15.0  #: seconds between polls of one meter; 0: as fast as the line allows
    fail_after: int = 3  #: consecutive failed polls before a meter is flagged
    backoff_s: float = 30.0  #: first re-probe delay of a flagged meter (doubling, up to 900 s)


@dataclass(frozen=True, slots=True)
class Console:
    """The technician's serial console."""

    port: str | None = None  #: serial device, or None for no console
    baud: int = 115200  #: console line speed (8N1)


@dataclass(frozen=True, slots=True)
class Billing:
    """Billing calendar and prepaid defaults (all money in 0.0001 yuan)."""

    year_start: tuple[int, int] = (1, 1)  #: (month, day) the billing year starts; YAML "MM-DD"
    settlement_day: int = 1  #: day of month of the monthly settlement snapshot (1..28)
    vacancy_tariff: str | None = None  #: tariff charged to ``vacancy`` for unassigned meters
    hoarding_limit: int | None = None  #: largest balance a top-up may leave; None: no limit
    prorate_tiers: bool = True  #: an account opened mid-year gets prorated tier thresholds
    holidays: tuple[date, ...] = ()  #: local dates: TOU day type holiday, relays' quiet days
    thresholds: ThresholdsConfig = ThresholdsConfig()  #: default levels of every account


@dataclass(frozen=True, slots=True)
class Relays:
    """How relays are tripped and closed (Step 7)."""

    close_mode: CloseMode = "allow"  #: after a top-up: ``allow`` (1B, button) or ``direct`` (1C)
    confirm_attempts: int = 3  #: sends before an unconfirmed relay is raised as an alarm
    confirm_delay_s: float = 2.0  #: wait before reading the relay state back
    trip_valid_s: int = 300  #: validity deadline written into a DL/T 645 1C trip/close
    quiet_hours: tuple[time, time] | None = None  #: (from, to) local: trips delayed to ``to``
    quiet_on_holidays: bool = False  #: no trips on ``billing.holidays``
    storm_share_pct: int = 30  #: YAML ``storm.share_pct``: share of trip accounts in a storm
    storm_window_s: int = 300  #: YAML ``storm.window_s``
    storm_min_accounts: int = 3  #: YAML ``storm.min_accounts``


@dataclass(frozen=True, slots=True)
class Commands:
    """Signed commands from the master station."""

    #: the master's Ed25519 public key (32 raw bytes); None: every command refused.  YAML:
    #: base64 of the 32 bytes, or a path to a PEM file (relative to the config file).
    public_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """One gateway, as its YAML file describes it."""

    gateway_id: str  #: unique id; part of every MQTT topic
    timezone: str  #: IANA zone of business days and TOU slots (default Asia/Shanghai)
    serial_buses: tuple[SerialBus, ...]  #: at least one
    meters: tuple[Meter, ...]  #: every meter, on any bus
    accounts: tuple[Account, ...]  #: tenants and the mall's own accounts
    tariffs: tuple[Tariff, ...]  #: every version of every tariff, in file order
    uplink: Uplink  #: MQTT to the master station
    store: Store = Store()  #: local SQLite store
    polling: Polling = Polling()  #: poll interval and failure handling
    console: Console = Console()  #: technician console
    billing: Billing = Billing()  #: billing calendar, vacancy, hoarding limit, thresholds
    relays: Relays = Relays()  #: trip and close behaviour
    commands: Commands = Commands()  #: signed commands (the master's public key)
    source: str = "<string>"  #: the file it was read from, for messages

    @property
    def tz(self) -> tzinfo:
        return ZoneInfo(self.timezone)

    def bus(self, name: str) -> SerialBus:
        return next(b for b in self.serial_buses if b.name == name)

    def meter(self, meter_id: str) -> Meter:
        return next(m for m in self.meters if m.id == meter_id)

    def account(self, account_id: str) -> Account:
        return next(a for a in self.accounts if a.id == account_id)

    def meters_on(self, bus: str) -> tuple[Meter, ...]:
        return tuple(m for m in self.meters if m.bus == bus)

    def tariff(self, tariff_id: str, at: datetime | None = None) -> Tariff:
        """The version of ``tariff_id`` in effect at ``at`` (None: the latest version).

        Raises KeyError when no version exists (or none is effective yet).
        """
        versions = [t for t in self.tariffs if t.id == tariff_id]
        if at is not None:
            versions = [t for t in versions if t.effective <= at]
        if not versions:
            raise KeyError(tariff_id)
        return max(versions, key=lambda t: t.version)
