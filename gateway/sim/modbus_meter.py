"""A simulated Modbus RTU meter: a profile's registers served from its physics.

The meter answers FC03/FC04 reads of any range inside the span its profile covers
for that function (first register to the end of the last; gaps inside read 0), its
relay as the profile declares it (FC05 coil or FC06 holding register, readable back
with FC01 or FC03), and nothing else:

- unit 0 (broadcast): writes act, nothing is answered; other units: not ours, None;
- a bad CRC: None (a meter ignores a garbled frame);
- an unknown function: exception 01; a register outside the span: 02; a count
  above the profile's ``max_registers`` (or 125) or a value that is neither the
  relay's on nor off value: 03;
- a profile without a relay refuses FC05 with 01 (no coils) and FC06 with 02.

Values are the inverse of :func:`gateway.protocols.modbus.decode_register`: the
physics' integer (Wh, W, dV, mA, cHz, milli) divided by the register's exact
factor; energy is truncated to the register's resolution (a meter never shows
energy it has not measured), other values rounded half to even; integers wrap at
their width, float32 is the nearest float.  Unsigned registers show magnitudes.
Combined energy is import + export (DL/T 645 combination word 05, as the DL/T meter).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from datetime import datetime
from fractions import Fraction
from typing import Any

from gateway.drivers.profiles import Profile
from gateway.protocols.modbus import (
    DataType,
    ReadReply,
    RegisterSpec,
    WordOrder,
    WriteReply,
    decode_register,
    encode_exception,
    encode_reply,
)
from gateway.protocols.quantities import Quantity
from gateway.sim.model import SimMeter
from gateway.sim.physics import MeterPhysics

__all__ = ["ModbusMeter", "crc16", "encode_words", "quantity_value"]

ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03
_ENERGY = frozenset(
    {
        Quantity.ENERGY_IMPORT,
        Quantity.ENERGY_EXPORT,
        Quantity.ENERGY_COMBINED,
        Quantity.ENERGY_T1,
        Quantity.ENERGY_T2,
        Quantity.ENERGY_T3,
        Quantity.ENERGY_T4,
    }
)
_SIGNED = frozenset({DataType.INT16, DataType.INT32, DataType.FLOAT32})


def crc16(data: bytes) -> bytes:
    """The two CRC bytes of an RTU frame, as sent (pymodbus's CRC)."""
    from pymodbus.framer import FramerRTU

    return int(FramerRTU.compute_CRC(data)).to_bytes(2, "big")


def quantity_value(quantity: Quantity, p: MeterPhysics) -> int:
    """The physics' value of ``quantity`` in its integer unit."""
    if quantity is Quantity.ENERGY_IMPORT:
        return p.energy_import_wh
    if quantity is Quantity.ENERGY_EXPORT:
        return p.energy_export_wh
    if quantity is Quantity.ENERGY_COMBINED:
        return (p.energy_import_wh + p.energy_export_wh) % p.register_wrap_wh
    if quantity in (Quantity.ENERGY_T1, Quantity.ENERGY_T2, Quantity.ENERGY_T3, Quantity.ENERGY_T4):
        return p.tariff_wh[quantity - Quantity.ENERGY_T1]
    if quantity is Quantity.POWER:
        return p.power_w
    if quantity in (Quantity.VOLTAGE_A, Quantity.VOLTAGE_B, Quantity.VOLTAGE_C):
        return p.voltage_dv
    if quantity in (Quantity.CURRENT_A, Quantity.CURRENT_B, Quantity.CURRENT_C):
        return p.current_ma
    if quantity is Quantity.FREQUENCY:
        return p.frequency_chz
    if quantity is Quantity.POWER_FACTOR:
        return p.power_factor_milli
    apparent = abs(p.power_w) * 1000 // p.power_factor_milli
    if quantity is Quantity.APPARENT_POWER:
        return apparent
    if quantity is Quantity.REACTIVE_POWER:
        return math.isqrt(max(apparent * apparent - p.power_w * p.power_w, 0))
    raise ValueError(f"no physics value for {quantity.name}")  # pragma: no cover


def encode_words(spec: RegisterSpec, value: int, word_order: WordOrder) -> list[int]:
    """The register words that make ``decode_register(spec, words)`` read ``value``
    (to the register's resolution)."""
    if spec.type not in _SIGNED:
        value = abs(value)
    raw = Fraction(value) / spec.factor
    if spec.type is DataType.FLOAT32:
        try:
            data = struct.pack(">f", float(raw))
        except OverflowError:
            data = struct.pack(">f", math.copysign(3.4e38, raw))
    else:
        number = math.floor(raw) if spec.quantity in _ENERGY else round(raw)
        bits = 16 * spec.words
        data = (number % (1 << bits)).to_bytes(bits // 8, "big")
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if word_order is WordOrder.LITTLE:
        words.reverse()
    return words


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class ModbusMeter(SimMeter):
    """Meter ``unit`` (1..247) of model ``profile``, its values from ``physics``."""

    def __init__(
        self,
        meter_id: str,
        unit: int,
        profile: Profile,
        physics: MeterPhysics,
        *,
        turnaround: float | None = None,
    ) -> None:
        if not 1 <= unit <= 247:
            raise ValueError(f"unit id must be 1..247, not {unit}")
        if physics.has_relay != (profile.relay is not None):
            raise ValueError(
                f"meter {meter_id}: physics has_relay={physics.has_relay} but profile"
                f" {profile.name} {'has a' if profile.relay else 'has no'} relay"
            )
        super().__init__(
            meter_id, profile.turnaround_ms / 1000 if turnaround is None else turnaround
        )
        self.unit = unit
        self.profile = profile
        self.physics = physics
        self.counters: dict[str, int] = {}
        regs = profile.registers
        self._span = (min(r.address for r in regs), max(r.end for r in regs))
        self._handlers: dict[int, Callable[[bytes, datetime], ReadReply | WriteReply | bytes]]
        encode_exception(unit, 3, ILLEGAL_DATA_ADDRESS)  # load pymodbus now, not mid-request
        self._handlers = {
            1: self._read_coils,
            3: self._read,
            4: self._read,
            5: self._write_coil,
            6: self._write_register,
        }

    # --- SimMeter ---------------------------------------------------------------

    def address_label(self) -> str:
        return str(self.unit)

    def handle(self, request: bytes, now: datetime) -> bytes | None:
        if len(request) < 4 or crc16(request[:-2]) != request[-2:]:
            return None
        unit, fc = request[0], request[1]
        if unit not in (0, self.unit):
            return None
        self.physics.advance(now)
        self._count("requests")
        handler = self._handlers.get(fc)
        try:
            if handler is None:
                raise _Refused(ILLEGAL_FUNCTION)
            if len(request) != 8:
                return None  # every function served here has 8-byte requests
            reply = handler(request, now)
        except _Refused as refused:
            self._count("exceptions")
            return None if unit == 0 else encode_exception(self.unit, fc, refused.code)
        if unit == 0:
            return None
        return reply if isinstance(reply, bytes) else encode_reply(reply)

    def with_wrong_address(self, reply: bytes) -> bytes:
        body = bytes([self.unit % 247 + 1]) + reply[1:-2]
        return body + crc16(body)

    def with_bad_checksum(self, reply: bytes) -> bytes:
        return reply[:-2] + bytes([reply[-2] ^ 0x5A, reply[-1] ^ 0xA5])

    def truth(self, now: datetime) -> dict[str, Any]:
        out = self.physics.truth(now)
        registers = {}
        for spec in self.profile.registers:
            words = encode_words(spec, quantity_value(spec.quantity, self.physics), self._order)
            registers[spec.quantity.name] = decode_register(spec, words, self._order)
        out.update(
            {
                "unit": self.unit,
                "profile": self.profile.name,
                "registers": registers,
                "counters": dict(self.counters),
                "faults": self.faults.as_dict(),
            }
        )
        return out

    def control(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """``relay`` (closed: bool), ``swap`` (meter_number, energy_import_wh[,
        energy_export_wh]), ``drift`` (ppm and/or offset_s).  Each takes an optional
        ``now`` (aware datetime or ISO string) to integrate up to first."""
        p = self.physics
        now = _now_arg(args, p.now)
        p.advance(now)
        if action == "relay":
            if bool(args.get("closed", True)):
                p.close_relay(now)
            else:
                p.open_relay(now)
            return {"relay_closed": p.relay_closed}
        if action == "swap":
            number = str(args["meter_number"])
            p.swap(
                now,
                number,
                int(args.get("energy_import_wh", 0)),
                energy_export_wh=int(args.get("energy_export_wh", 0)),
            )
            return {"meter_number": number, "energy_import_wh": p.energy_import_wh}
        if action == "drift":
            ppm, offset = args.get("ppm"), args.get("offset_s")
            p.set_drift(
                now, None if ppm is None else int(ppm), None if offset is None else float(offset)
            )
            return {"drift_ppm": p.drift_ppm, "meter_time": p.meter_time(now).isoformat()}
        return super().control(action, args)

    # --- functions --------------------------------------------------------------

    @property
    def _order(self) -> WordOrder:
        return self.profile.word_order

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _relay_word(self) -> int:
        relay = self.profile.relay
        assert relay is not None
        return relay.on_value if self.physics.relay_closed else relay.off_value

    def _read(self, request: bytes, now: datetime) -> ReadReply:
        fc = request[1]
        address, count = struct.unpack(">HH", request[2:6])
        if not 1 <= count <= min(125, self.profile.max_registers):
            raise _Refused(ILLEGAL_DATA_VALUE)
        end = address + count
        relay = self.profile.relay
        words: dict[int, int] = {}
        if relay is not None and relay.kind == "holding" and fc == 3:
            words[relay.address] = self._relay_word()
        if fc == self.profile.function_code:
            lo, hi = self._span
            if lo <= address and end <= hi:
                for spec in self.profile.registers:
                    if spec.address < end and spec.end > address:
                        value = quantity_value(spec.quantity, self.physics)
                        for i, w in enumerate(encode_words(spec, value, self._order)):
                            words[spec.address + i] = w
                return ReadReply(self.unit, fc, tuple(words.get(a, 0) for a in range(address, end)))
        if words and all(a in words for a in range(address, end)):
            return ReadReply(self.unit, fc, tuple(words[a] for a in range(address, end)))
        raise _Refused(ILLEGAL_DATA_ADDRESS)

    def _read_coils(self, request: bytes, now: datetime) -> bytes:
        address, count = struct.unpack(">HH", request[2:6])
        relay = self.profile.relay
        if relay is None or relay.kind != "coil":
            raise _Refused(ILLEGAL_FUNCTION)
        if not 1 <= count <= 2000:
            raise _Refused(ILLEGAL_DATA_VALUE)
        if (address, count) != (relay.address, 1):
            raise _Refused(ILLEGAL_DATA_ADDRESS)
        body = bytes([self.unit, 1, 1, self._relay_word()])
        return body + crc16(body)

    def _write_coil(self, request: bytes, now: datetime) -> WriteReply:
        address, raw = struct.unpack(">HH", request[2:6])
        relay = self.profile.relay
        if relay is None or relay.kind != "coil":
            raise _Refused(ILLEGAL_FUNCTION)
        if address != relay.address:
            raise _Refused(ILLEGAL_DATA_ADDRESS)
        if raw not in (0x0000, 0xFF00):
            raise _Refused(ILLEGAL_DATA_VALUE)
        value = 1 if raw else 0
        self._switch(value, now)
        return WriteReply(self.unit, 5, address, value)

    def _write_register(self, request: bytes, now: datetime) -> WriteReply:
        address, value = struct.unpack(">HH", request[2:6])
        relay = self.profile.relay
        if relay is None or relay.kind != "holding" or address != relay.address:
            raise _Refused(ILLEGAL_DATA_ADDRESS)
        self._switch(value, now)
        return WriteReply(self.unit, 6, address, value)

    def _switch(self, value: int, now: datetime) -> None:
        relay = self.profile.relay
        assert relay is not None
        if value == relay.on_value:
            self.physics.close_relay(now)
            self._count("relay_close")
        elif value == relay.off_value:
            self.physics.open_relay(now)
            self._count("relay_open")
        else:
            raise _Refused(ILLEGAL_DATA_VALUE)


def _now_arg(args: dict[str, Any], default: datetime) -> datetime:
    now = args.get("now")
    if now is None:
        return default
    if isinstance(now, str):
        now = datetime.fromisoformat(now)
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError("'now' must be a timezone-aware datetime or ISO string")
    return now
