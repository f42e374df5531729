"""A simulated DL/T 645-2007 meter: request frames in, reply frames out, from its physics.

It answers reads (11) of the DIs in domain.md from its :class:`MeterPhysics`, read
address (13), date/time writes (14, password checked), broadcast time (08, small
corrections only, never answered), freeze (16) and remote control (1C: password,
validity deadline, protect mode, close-allow with a button press).  Frames are built
and parsed by :mod:`gateway.protocols.dlt645`; this module only decides what to say.

Assumptions (say so if a real meter differs): a read of a DI the meter does not keep
gets D1 "no such data"; a refused remote control (deadline passed, protect mode, no
relay) gets DC with bit0 "other", a wrong password DC/D4 with bit2; a change-baud
request gets D7 "baud unchangeable"; the combined energy 00000000 is forward +
reverse (combination word 05, the common factory setting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from gateway.protocols.dlt645 import (
    BROADCAST_ADDRESS,
    BroadcastTime,
    ChangeBaudRequest,
    ErrorBits,
    Event,
    FreezeReply,
    FreezeRequest,
    NegativeReply,
    ReadAddressReply,
    ReadAddressRequest,
    ReadFollowUp,
    ReadReply,
    ReadRequest,
    RelayAction,
    RelayControl,
    RelayReply,
    SecureRelayControl,
    StatusWord1,
    StatusWord2,
    StatusWord3,
    UnknownFrame,
    Value,
    WriteReply,
    WriteRequest,
    build_raw,
    decode_raw,
    decode_value,
    encode,
    encode_value,
    parse_raw,
)
from gateway.protocols.errors import ProtocolError
from gateway.sim.model import SimMeter
from gateway.sim.physics import Freeze, MeterPhysics

__all__ = ["BROADCAST_WINDOW", "Dlt645Meter"]

BROADCAST_WINDOW = timedelta(minutes=5)
"""A broadcast time is applied only if it is this close to the meter's clock."""
_MIDNIGHT_GUARD = timedelta(minutes=5)
_SIGNED_ENERGY_LIMIT = 80_000_000  # 0.01 kWh: a signed XXXXXX.XX holds up to 799999.99
_KW_LIMIT = 799_999  # 0.1 W: a signed XX.XXXX kW holds up to 79.9999 kW
_BROADCAST_BYTES = b"\x99" * 6
_WILDCARD_FUNCTIONS = frozenset({0x11, 0x12, 0x13})


def _kwh(wh: int) -> Decimal:
    """A register in Wh as the meter shows it: XXXXXX.XX kWh (10 Wh resolution)."""
    return Decimal(wh // 10).scaleb(-2)


def _block(total: int, tariffs: list[int] | tuple[int, ...]) -> Value:
    """Forward active energy block (``FF``): total and the four tariffs."""
    return {"total": _kwh(total), **{f"t{i + 1}": _kwh(v) for i, v in enumerate(tariffs)}}


def _now_arg(args: dict[str, Any], default: datetime) -> datetime:
    now = args.get("now")
    if now is None:
        return default
    if isinstance(now, str):
        now = datetime.fromisoformat(now)
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError("'now' must be a timezone-aware datetime or ISO string")
    return now


class Dlt645Meter(SimMeter):
    """One DL/T 645-2007 meter at ``address`` (12 digits), answering from ``physics``.

    ``close_mode`` is ``"button"`` (close-allow 1B waits for the :meth:`control`
    action ``button``) or ``"auto"`` (1B closes at once, as some meters do).
    ``broadcast_per_day`` caps accepted broadcast-time corrections per meter day.
    ``preamble`` FE bytes precede each reply.
    """

    def __init__(
        self,
        meter_id: str,
        address: str,
        physics: MeterPhysics,
        *,
        turnaround: float = 0.05,
        password: str = "000000",
        password_level: int = 2,
        protect: bool = False,
        close_mode: str = "button",
        asset_code: str | None = None,
        broadcast_per_day: int = 1,
        preamble: int = 0,
    ) -> None:
        super().__init__(meter_id, turnaround)
        if len(address) != 12 or not address.isdigit() or address == BROADCAST_ADDRESS:
            raise ValueError(f"address {address!r} is not 12 digits (and not 99…99)")
        if close_mode not in ("button", "auto"):
            raise ValueError("close_mode is 'button' or 'auto'")
        if len(password) != 6 or not password.isdigit():
            raise ValueError("password is 6 digits")
        _check_meter_number(physics.meter_number)
        self.address = address
        self._address_bytes = bytes.fromhex(address)[::-1]
        self.physics = physics
        self.password = password
        self.password_level = password_level
        self.protect = protect
        self.close_mode = close_mode
        self.asset_code = asset_code if asset_code is not None else f"SIM{address}"
        self.broadcast_per_day = broadcast_per_day
        self.preamble = preamble
        self.relay_command_open = not physics.relay_closed
        self.close_allowed = False
        self.alarm = False
        self.counters: dict[str, int] = {}
        self.last_control: dict[str, Any] | None = None
        self.instant_freezes: list[Freeze] = []
        self.freeze_schedule: dict[str, int | None] | None = None
        self._broadcast_day: date | None = None
        self._broadcast_today = 0
        self._reader_table = self._readers()

    # --- SimMeter ---------------------------------------------------------------

    def address_label(self) -> str:
        return self.address

    def handle(self, request: bytes, now: datetime) -> bytes | None:
        start = 0
        while start < len(request) and request[start] == 0xFE:
            start += 1
        address = request[start + 1 : start + 7]
        if address not in (self._address_bytes, _BROADCAST_BYTES) and 0xAA not in address:
            return None  # cheap early exit: most frames on a bus are for another meter
        try:
            raw = parse_raw(request)
            event = decode_raw(raw)
        except ProtocolError:
            return None  # a garbled frame: a meter says nothing
        if raw.control & 0x80:
            return None  # a reply from another meter
        if raw.address == BROADCAST_ADDRESS:
            self.physics.advance(now)
            if isinstance(event, BroadcastTime):
                self._broadcast_time(now, event.at)
            elif isinstance(event, FreezeRequest):
                self._freeze(now, event)
            return None
        if not self._addressed(raw.address, raw.control & 0x1F):
            return None
        self.physics.advance(now)
        self._count("requests")
        reply = self._answer(event, now)
        return None if reply is None else encode(reply, preamble=self.preamble)

    def with_wrong_address(self, reply: bytes) -> bytes:
        raw = parse_raw(reply)
        preamble = len(reply) - len(reply.lstrip(b"\xfe"))
        other = f"{(int(raw.address[:-1]) + 1) % 10**11:011d}{raw.address[-1]}"
        return build_raw(replace(raw, address=other), preamble=preamble)

    def with_bad_checksum(self, reply: bytes) -> bytes:
        return reply[:-2] + bytes([(reply[-2] + 1) & 0xFF]) + reply[-1:]

    def truth(self, now: datetime) -> dict[str, Any]:
        out = self.physics.truth(now)
        out.update(
            {
                "address": self.address,
                "protect": self.protect,
                "close_allowed": self.close_allowed,
                "relay_command_open": self.relay_command_open,
                "alarm": self.alarm,
                "status_word_3": int(self.status_word_3()),
                "counters": dict(self.counters),
                "last_control": self.last_control,
                "faults": self.faults.as_dict(),
            }
        )
        return out

    def control(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """``button``; ``swap`` (meter_number, energy_import_wh[, energy_export_wh,
        tariff_wh]); ``drift`` (ppm and/or offset_s); ``set_protect`` (on).  Each takes
        an optional ``now`` (aware datetime or ISO string) to integrate up to first."""
        p = self.physics
        now = _now_arg(args, p.now)
        if action == "button":
            p.advance(now)
            closed = False
            if self.close_allowed and not p.relay_closed:
                p.close_relay(now)
                closed = True
            self.close_allowed = False if closed else self.close_allowed
            return {"closed": closed, "relay_closed": p.relay_closed}
        if action == "swap":
            number = str(args["meter_number"])
            _check_meter_number(number)
            p.swap(
                now,
                number,
                int(args.get("energy_import_wh", 0)),
                energy_export_wh=int(args.get("energy_export_wh", 0)),
                tariff_wh=args.get("tariff_wh"),
            )
            self.relay_command_open = self.close_allowed = False
            return {"meter_number": number, "energy_import_wh": p.energy_import_wh}
        if action == "drift":
            ppm = args.get("ppm")
            offset = args.get("offset_s")
            p.set_drift(
                now, None if ppm is None else int(ppm), None if offset is None else float(offset)
            )
            return {"drift_ppm": p.drift_ppm, "meter_time": p.meter_time(now).isoformat()}
        if action == "set_protect":
            self.protect = bool(args.get("on", True))
            return {"protect": self.protect}
        return super().control(action, args)

    # --- requests ---------------------------------------------------------------

    def _addressed(self, address: str, function: int) -> bool:
        if address == self.address:
            return True
        if function not in _WILDCARD_FUNCTIONS or "A" not in address:
            return False
        pairs = zip(address[::2], address[1::2], self.address[::2], self.address[1::2], strict=True)
        return all(a + b == "AA" or a + b == c + d for a, b, c, d in pairs)

    def _answer(self, event: Event, now: datetime) -> Event | None:
        match event:
            case ReadRequest(di=di, blocks=None):
                value = self._read(di)
                if value is None:
                    return self._error(0x11, ErrorBits.NO_DATA, "read-no-data")
                return ReadReply(self.address, di, encode_value(di, value))
            case ReadRequest():
                return self._error(0x11, ErrorBits.NO_DATA, "read-no-data")
            case ReadFollowUp():
                return self._error(0x12, ErrorBits.NO_DATA, "read-no-data")
            case ReadAddressRequest():
                return ReadAddressReply(self.address)
            case WriteRequest():
                return self._write(event, now)
            case FreezeRequest():
                self._freeze(now, event)
                return FreezeReply(self.address)
            case RelayControl():
                return self._relay(event, now)
            case SecureRelayControl():
                return self._error(0x1C, ErrorBits.AUTHORITY, "control-secure-refused")
            case ChangeBaudRequest():
                return self._error(0x17, ErrorBits.BAUD_UNCHANGEABLE, "baud-refused")
            case BroadcastTime():
                return None  # time is only ever broadcast (99…99)
            case UnknownFrame(control=control):
                return self._error(control & 0x1F, ErrorBits.OTHER, "unknown-command")
        return None

    def _error(self, function: int, bits: ErrorBits, counter: str) -> NegativeReply:
        self._count(counter)
        return NegativeReply(self.address, function, bits)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _authorised(self, level: int, password: str) -> bool:
        return level == self.password_level and password == self.password

    # --- reads ------------------------------------------------------------------

    def status_word_3(self) -> StatusWord3:
        word = StatusWord3(0)
        if not self.physics.relay_closed:
            word |= StatusWord3.RELAY_OPEN
        if self.relay_command_open:
            word |= StatusWord3.RELAY_COMMAND_OPEN
        if self.alarm:
            word |= StatusWord3.PRE_TRIP_ALARM
        if self.protect:
            word |= StatusWord3.PROTECT_MODE
        return word

    def _read(self, di: int) -> Value | None:
        fixed = self._reader_table.get(di)
        if fixed is not None:
            return fixed()
        family, di1, di0 = di >> 16, (di >> 8) & 0xFF, di & 0xFF
        if family == 0x0506 and 1 <= di0 <= 0x3E and di1 in (0, 1, 2):
            return self._daily(di1, di0)
        if family in (0x0001, 0x0002) and 1 <= di0 <= 12:
            return self._settlement(family, di1, di0)
        return None

    def _daily(self, di1: int, n: int) -> Value | None:
        freezes = self.physics.daily_freezes
        if n > len(freezes):
            return None
        f = freezes[n - 1]
        if di1 == 0:
            return f.at.replace(tzinfo=None)
        if di1 == 1:
            return _block(f.import_wh, f.tariff_wh)
        return {"total": _kwh(f.export_wh)}

    def _settlement(self, family: int, di1: int, n: int) -> Value | None:
        freezes = self.physics.settlement_freezes
        if n > len(freezes):
            return None
        f = freezes[n - 1]
        if family == 0x0002:
            return (
                {"total": _kwh(f.export_wh)}
                if di1 == 0xFF
                else _kwh(f.export_wh)
                if di1 == 0
                else None
            )
        if di1 == 0xFF:
            return _block(f.import_wh, f.tariff_wh)
        if di1 == 0:
            return _kwh(f.import_wh)
        return _kwh(f.tariff_wh[di1 - 1]) if 1 <= di1 <= 4 else None

    def _readers(self) -> dict[int, Callable[[], Value]]:
        """DI -> the value it reads now (built once; reads the live physics)."""
        p = self.physics
        three = p.phases == 3
        phases = ("a", "b", "c") if three else ("a",)

        def kw(watts: int) -> Decimal:
            return Decimal(max(-_KW_LIMIT, min(_KW_LIMIT, watts * 10))).scaleb(-4)

        def phase_kw() -> Decimal:
            return kw(p.power_w // 3 if three else p.power_w)

        def amps() -> Decimal:
            return Decimal(max(-799_999, min(799_999, p.current_ma))).scaleb(-3)

        def volts() -> Decimal:
            return Decimal(p.voltage_dv).scaleb(-1)

        def pf() -> Decimal:
            return Decimal(p.power_factor_milli).scaleb(-3)

        def combined() -> Decimal:
            total = (p.energy_import_wh + p.energy_export_wh) // 10 % _SIGNED_ENERGY_LIMIT
            return Decimal(total).scaleb(-2)

        def clock() -> datetime:
            return p.meter_time(p.now).replace(tzinfo=None, microsecond=0)

        def status1() -> StatusWord1:
            return StatusWord1.ACTIVE_POWER_REVERSE if p.power_w < 0 else StatusWord1(0)

        def status2() -> StatusWord2:
            if p.power_w >= 0:
                return StatusWord2(0)
            if three:
                return (
                    StatusWord2.A_ACTIVE_REVERSE
                    | StatusWord2.B_ACTIVE_REVERSE
                    | StatusWord2.C_ACTIVE_REVERSE
                )
            return StatusWord2.A_ACTIVE_REVERSE

        readers: dict[int, Callable[[], Value]] = {
            0x00000000: combined,
            0x0000FF00: lambda: {"total": combined()},
            0x00010000: lambda: _kwh(p.energy_import_wh),
            0x0001FF00: lambda: _block(p.energy_import_wh, p.tariff_wh),
            0x00020000: lambda: _kwh(p.energy_export_wh),
            0x0002FF00: lambda: {"total": _kwh(p.energy_export_wh)},
            0x0201FF00: lambda: dict.fromkeys(phases, volts()),
            0x0202FF00: lambda: dict.fromkeys(phases, amps()),
            0x02030000: lambda: kw(p.power_w),
            0x0203FF00: lambda: {"total": kw(p.power_w), **dict.fromkeys(phases, phase_kw())},
            0x02060000: pf,
            0x0206FF00: lambda: {"total": pf(), **dict.fromkeys(phases, pf())},
            0x02800002: lambda: Decimal(p.frequency_chz).scaleb(-2),
            0x04000101: lambda: clock().date(),
            0x04000102: lambda: clock().time(),
            0x04000401: lambda: self.address,
            0x04000402: lambda: p.meter_number,
            0x04000403: lambda: self.asset_code,
            0x04000501: status1,
            0x04000502: status2,
            0x04000503: self.status_word_3,
            0x04000B01: lambda: {"hour": 0, "day": p.settlement_day},
            0x00900200: lambda: Decimal(0),
            0x00900201: lambda: Decimal(0),
        }
        for tariff in range(1, 5):
            readers[0x00010000 | tariff << 8] = self._tariff_reader(tariff)
        for i in range(1, len(phases) + 1):
            readers[0x02010000 | i << 8] = volts
            readers[0x02020000 | i << 8] = amps
            readers[0x02030000 | i << 8] = phase_kw
            readers[0x02060000 | i << 8] = pf
        return readers

    def _tariff_reader(self, tariff: int) -> Callable[[], Value]:
        return lambda: _kwh(self.physics.tariff_wh[tariff - 1])

    # --- writes, time, freeze ------------------------------------------------------

    def _write(self, event: WriteRequest, now: datetime) -> Event:
        if not self._authorised(event.level, event.password):
            return self._error(0x14, ErrorBits.AUTHORITY, "write-refused-password")
        if event.di not in (0x04000101, 0x04000102):
            return self._error(0x14, ErrorBits.OTHER, "write-refused-di")
        try:
            value = decode_value(event.di, event.data)
        except ProtocolError:
            return self._error(0x14, ErrorBits.OTHER, "write-refused-value")
        mt = self.physics.meter_time(now).replace(tzinfo=None)
        if isinstance(value, date) and not isinstance(value, datetime):
            new = datetime.combine(value, mt.time())
        elif isinstance(value, time):
            new = datetime.combine(mt.date(), value)
        else:  # pragma: no cover - the codec gives a date or a time for these DIs
            return self._error(0x14, ErrorBits.OTHER, "write-refused-value")
        self.physics.set_meter_time(now, new)
        self._count("time-written")
        return WriteReply(self.address)

    def _broadcast_time(self, now: datetime, at: datetime) -> None:
        mt = self.physics.meter_time(now).replace(tzinfo=None)
        day = mt.date()
        if self._broadcast_day != day:
            self._broadcast_day, self._broadcast_today = day, 0
        since_midnight = mt - datetime.combine(day, time(0))
        if abs(at - mt) > BROADCAST_WINDOW:
            self._count("broadcast-time-refused-offset")
        elif (
            since_midnight < _MIDNIGHT_GUARD or since_midnight > timedelta(days=1) - _MIDNIGHT_GUARD
        ):
            self._count("broadcast-time-refused-midnight")
        elif self._broadcast_today >= self.broadcast_per_day:
            self._count("broadcast-time-refused-daily-limit")
        else:
            self.physics.set_meter_time(now, at)
            self._broadcast_today += 1
            self._count("broadcast-time-applied")

    def _freeze(self, now: datetime, event: FreezeRequest) -> None:
        fields = (event.minute, event.hour, event.day, event.month)
        if all(v is None for v in fields):
            self.instant_freezes.insert(0, self.physics.freeze_now(now))
            del self.instant_freezes[3:]
            self._count("freeze-instant")
        else:
            self.freeze_schedule = dict(
                zip(("minute", "hour", "day", "month"), fields, strict=True)
            )
            self._count("freeze-scheduled")

    # --- remote control ------------------------------------------------------------

    def _relay(self, event: RelayControl, now: datetime) -> Event:
        p = self.physics
        action = event.action
        result = self._relay_refusal(event, now)
        self.last_control = {"action": action.name.lower(), "result": result or "ok"}
        if result is not None:
            bits = ErrorBits.AUTHORITY if result == "password" else ErrorBits.OTHER
            return self._error(0x1C, bits, f"control-refused-{result}")
        if action is RelayAction.TRIP:
            p.open_relay(now)
            self.relay_command_open, self.close_allowed = True, False
        elif action is RelayAction.CLOSE_ALLOW:
            self.relay_command_open = False
            if not p.relay_closed:
                if self.close_mode == "auto":
                    p.close_relay(now)
                else:
                    self.close_allowed = True
        elif action is RelayAction.CLOSE:
            p.close_relay(now)
            self.relay_command_open, self.close_allowed = False, False
        elif action in (RelayAction.ALARM, RelayAction.ALARM_RELEASE):
            self.alarm = action is RelayAction.ALARM
        else:
            self.protect = action is RelayAction.PROTECT
        self._count(f"control-{action.name.lower()}")
        return RelayReply(self.address)

    def _relay_refusal(self, event: RelayControl, now: datetime) -> str | None:
        if not self._authorised(event.level, event.password):
            return "password"
        if event.valid_until < self.physics.meter_time(now).replace(tzinfo=None):
            return "expired"
        relay_actions = (RelayAction.TRIP, RelayAction.CLOSE_ALLOW, RelayAction.CLOSE)
        if event.action in relay_actions and not self.physics.has_relay:
            return "no-relay"
        if event.action is RelayAction.TRIP and self.protect:
            return "protect"
        return None


def _check_meter_number(number: str) -> None:
    if len(number) != 12 or not number.isdigit():
        raise ValueError(f"meter number {number!r} is not 12 digits (DI 04000402)")
