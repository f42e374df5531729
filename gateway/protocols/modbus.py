"""Modbus RTU meters, sans-IO: register specs and their exact decoding.

A meter's register holds a raw number (float32, int32, uint32, int16 or uint16 in
one or two 16-bit words).  :func:`decode_register` turns it into an exact integer in
its :class:`~gateway.protocols.quantities.Quantity`'s unit::

    value = round_half_even(raw x scale x unit factor x CT/PT ratio)

Every factor is a :class:`~fractions.Fraction`.  A float32 is converted with
``Fraction(float(x))``, which is exact (every float32 is a binary fraction a double
holds exactly), so the only rounding is the final one, half to even.  NaN and
infinities are a :class:`~gateway.protocols.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction

from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.quantities import UNITS, Quantity

__all__ = [
    "UNIT_FACTORS",
    "DataType",
    "RegisterSpec",
    "WordOrder",
    "decode_register",
    "ratio_factor",
    "raw_value",
    "unit_factor",
]


class DataType(StrEnum):
    """How a register's words encode its number."""

    FLOAT32 = "float32"
    INT32 = "int32"
    UINT32 = "uint32"
    INT16 = "int16"
    UINT16 = "uint16"

    @property
    def words(self) -> int:
        """16-bit registers this type occupies."""
        return 1 if self in (DataType.INT16, DataType.UINT16) else 2


class WordOrder(StrEnum):
    """Order of the two words of a 32-bit value (bytes within a word are always big-endian)."""

    BIG = "big"
    """High word first (Modbus convention; Eastron, Chint)."""
    LITTLE = "little"
    """Low word first ("word swapped")."""


# (meter's unit, quantity's unit) -> exact factor.
UNIT_FACTORS: dict[tuple[str, str], Fraction] = {
    ("Wh", "Wh"): Fraction(1),
    ("kWh", "Wh"): Fraction(1000),
    ("MWh", "Wh"): Fraction(1_000_000),
    ("W", "W"): Fraction(1),
    ("kW", "W"): Fraction(1000),
    ("var", "var"): Fraction(1),
    ("kvar", "var"): Fraction(1000),
    ("VA", "VA"): Fraction(1),
    ("kVA", "VA"): Fraction(1000),
    ("V", "dV"): Fraction(10),
    ("dV", "dV"): Fraction(1),
    ("kV", "dV"): Fraction(10_000),
    ("A", "mA"): Fraction(1000),
    ("mA", "mA"): Fraction(1),
    ("Hz", "cHz"): Fraction(100),
    ("cHz", "cHz"): Fraction(1),
    ("1", "milli"): Fraction(1000),
    ("milli", "milli"): Fraction(1),
}
"""Exact conversions from a meter's unit into a quantity's unit (``"1"``: a plain ratio)."""

_CT_QUANTITIES = frozenset(
    {
        Quantity.ENERGY_IMPORT,
        Quantity.ENERGY_EXPORT,
        Quantity.ENERGY_COMBINED,
        Quantity.ENERGY_T1,
        Quantity.ENERGY_T2,
        Quantity.ENERGY_T3,
        Quantity.ENERGY_T4,
        Quantity.POWER,
        Quantity.REACTIVE_POWER,
        Quantity.APPARENT_POWER,
        Quantity.CURRENT_A,
        Quantity.CURRENT_B,
        Quantity.CURRENT_C,
    }
)
_PT_QUANTITIES = (_CT_QUANTITIES - {Quantity.CURRENT_A, Quantity.CURRENT_B, Quantity.CURRENT_C}) | {
    Quantity.VOLTAGE_A,
    Quantity.VOLTAGE_B,
    Quantity.VOLTAGE_C,
}


def unit_factor(unit: str, quantity: Quantity) -> Fraction:
    """Exact factor from ``unit`` into ``quantity``'s unit; LocalProtocolError if none."""
    try:
        return UNIT_FACTORS[(unit, UNITS[quantity])]
    except KeyError:
        known = sorted(src for src, dst in UNIT_FACTORS if dst == UNITS[quantity])
        raise LocalProtocolError(
            f"cannot convert {unit!r} into {UNITS[quantity]} for {quantity.name};"
            f" known units: {', '.join(known)}"
        ) from None


def ratio_factor(quantity: Quantity, ct: int | Fraction = 1, pt: int | Fraction = 1) -> Fraction:
    """The instrument-transformer ratio that multiplies ``quantity``.

    Current x CT; voltage x PT; energy and power (active, reactive, apparent) x CT x PT;
    frequency and power factor are not scaled.
    """
    factor = Fraction(1)
    if quantity in _CT_QUANTITIES:
        factor *= Fraction(ct)
    if quantity in _PT_QUANTITIES:
        factor *= Fraction(pt)
    return factor


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Where a meter keeps one quantity and how to read it."""

    quantity: Quantity = field(metadata={"doc": "what the register measures (Quantity name)"})
    address: int = field(metadata={"doc": "first register address, 0-based protocol address"})
    type: DataType = field(metadata={"doc": "float32, int32, uint32, int16 or uint16"})
    unit: str = field(
        metadata={"doc": "the meter's unit after scaling (kWh, Wh, V, A, kW, W, Hz, 1 ...)"}
    )
    scale: Fraction = field(
        default=Fraction(1),
        metadata={"doc": "exact factor from the raw number to the meter's unit (e.g. 1/10)"},
    )

    def __post_init__(self) -> None:
        if not 0 <= self.address <= 0xFFFF - (self.words - 1):
            raise LocalProtocolError(f"{self.quantity.name}: address {self.address} out of range")
        if not isinstance(self.scale, Fraction) or self.scale == 0:
            raise LocalProtocolError(f"{self.quantity.name}: scale must be a non-zero Fraction")
        unit_factor(self.unit, self.quantity)  # refuses an unknown unit now, not at decode time

    @property
    def words(self) -> int:
        """Registers this value occupies."""
        return self.type.words

    @property
    def end(self) -> int:
        """One past the last register address."""
        return self.address + self.words

    @property
    def factor(self) -> Fraction:
        """Exact factor from the raw number into the quantity's unit (before CT/PT)."""
        return self.scale * unit_factor(self.unit, self.quantity)


def raw_value(words: Sequence[int], type_: DataType, word_order: WordOrder) -> Fraction:
    """The exact number held by ``words`` (16-bit each) as ``type_`` in ``word_order``."""
    if len(words) != type_.words:
        raise RemoteProtocolError(f"{type_} needs {type_.words} registers, got {len(words)}")
    if any(not 0 <= w <= 0xFFFF for w in words):
        raise RemoteProtocolError(f"register words out of range: {list(words)}")
    ordered = list(words) if word_order is WordOrder.BIG else list(reversed(words))
    data = b"".join(w.to_bytes(2, "big") for w in ordered)
    if type_ is DataType.FLOAT32:
        (number,) = struct.unpack(">f", data)
        if not math.isfinite(number):
            raise RemoteProtocolError(f"float32 register is not finite: {data.hex()} = {number}")
        return Fraction(number)  # exact: a float32 widened to a double loses nothing
    signed = type_ in (DataType.INT16, DataType.INT32)
    return Fraction(int.from_bytes(data, "big", signed=signed))


def decode_register(
    spec: RegisterSpec,
    words: Sequence[int],
    word_order: WordOrder = WordOrder.BIG,
    *,
    ct: int | Fraction = 1,
    pt: int | Fraction = 1,
) -> int:
    """``words`` of ``spec`` as an integer in its quantity's unit, CT/PT applied.

    One rounding, half to even, after all exact multiplications.
    """
    exact = raw_value(words, spec.type, word_order) * spec.factor
    exact *= ratio_factor(spec.quantity, ct, pt)
    return round(exact)
