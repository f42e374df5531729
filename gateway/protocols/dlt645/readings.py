"""DL/T 645 values -> the gateway's :class:`~gateway.protocols.quantities.Quantity` units.

Energy, voltage, current, frequency and power factor convert exactly (kWh with 2
decimals -> Wh, V with 1 -> dV, A with 3 -> mA, Hz with 2 -> cHz, PF with 3 -> milli).
Power is sent in kW with 4 decimals, i.e. 0.1 W, while :data:`~gateway.protocols.
quantities.UNITS` counts whole W: it is rounded half to even (at most 0.05 W off, far
below any meter's accuracy class); the same for reactive (var) and apparent (VA) power.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal

from gateway.protocols.dlt645.dataids import Value, decode_value
from gateway.protocols.dlt645.frames import ReadReply
from gateway.protocols.quantities import Quantity

__all__ = ["QUANTITY_DIS", "quantities", "reply_quantities", "to_unit"]

_Q = Quantity
_KILO = 1000

# DI -> (quantity, factor from the DI's unit to the quantity's unit); blocks map parts.
_SINGLE: dict[int, tuple[Quantity, int]] = {
    0x00000000: (_Q.ENERGY_COMBINED, _KILO),
    0x00010000: (_Q.ENERGY_IMPORT, _KILO),
    0x00010100: (_Q.ENERGY_T1, _KILO),
    0x00010200: (_Q.ENERGY_T2, _KILO),
    0x00010300: (_Q.ENERGY_T3, _KILO),
    0x00010400: (_Q.ENERGY_T4, _KILO),
    0x00020000: (_Q.ENERGY_EXPORT, _KILO),
    0x02010100: (_Q.VOLTAGE_A, 10),
    0x02010200: (_Q.VOLTAGE_B, 10),
    0x02010300: (_Q.VOLTAGE_C, 10),
    0x02020100: (_Q.CURRENT_A, _KILO),
    0x02020200: (_Q.CURRENT_B, _KILO),
    0x02020300: (_Q.CURRENT_C, _KILO),
    0x02030000: (_Q.POWER, _KILO),
    0x02040000: (_Q.REACTIVE_POWER, _KILO),
    0x02050000: (_Q.APPARENT_POWER, _KILO),
    0x02060000: (_Q.POWER_FACTOR, _KILO),
    0x02800002: (_Q.FREQUENCY, 100),
}
_BLOCKS: dict[int, tuple[dict[str, Quantity], int]] = {
    0x0001FF00: (
        {
            "total": _Q.ENERGY_IMPORT,
            "t1": _Q.ENERGY_T1,
            "t2": _Q.ENERGY_T2,
            "t3": _Q.ENERGY_T3,
            "t4": _Q.ENERGY_T4,
        },
        _KILO,
    ),
    0x0002FF00: ({"total": _Q.ENERGY_EXPORT}, _KILO),
    0x0201FF00: ({"a": _Q.VOLTAGE_A, "b": _Q.VOLTAGE_B, "c": _Q.VOLTAGE_C}, 10),
    0x0202FF00: ({"a": _Q.CURRENT_A, "b": _Q.CURRENT_B, "c": _Q.CURRENT_C}, _KILO),
    0x0203FF00: ({"total": _Q.POWER}, _KILO),
    0x0204FF00: ({"total": _Q.REACTIVE_POWER}, _KILO),
    0x0205FF00: ({"total": _Q.APPARENT_POWER}, _KILO),
    0x0206FF00: ({"total": _Q.POWER_FACTOR}, _KILO),
}

QUANTITY_DIS: frozenset[int] = frozenset(_SINGLE) | frozenset(_BLOCKS)
"""The DIs that :func:`quantities` maps (a poller reads these)."""


def to_unit(value: int | Decimal, factor: int) -> int:
    """``value × factor`` as an integer, rounded half to even if it is not one."""
    return int((Decimal(value) * factor).to_integral_value(rounding=ROUND_HALF_EVEN))


def quantities(di: int, value: Value) -> dict[Quantity, int]:
    """The quantities in a decoded ``value`` of ``di`` ({} for a DI that maps to none)."""
    single = _SINGLE.get(di)
    if single is not None:
        quantity, factor = single
        if isinstance(value, int | Decimal):
            return {quantity: to_unit(value, factor)}
        return {}
    block = _BLOCKS.get(di)
    if block is None or not isinstance(value, Mapping):
        return {}
    names, factor = block
    out: dict[Quantity, int] = {}
    for name, part in value.items():
        q = names.get(name)
        if q is not None and isinstance(part, int | Decimal):
            out[q] = to_unit(part, factor)
    return out


def reply_quantities(reply: ReadReply) -> dict[Quantity, int]:
    """Decode a read reply's value and map it; raises :class:`RemoteProtocolError`."""
    return quantities(reply.di, decode_value(reply.di, reply.data))
