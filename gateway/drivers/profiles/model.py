"""Meter profiles as data: the dataclasses and their loading from YAML.

A profile file is a YAML mapping whose keys are the fields of :class:`Profile`
(``relay`` and each item of ``registers`` are mappings of :class:`RelaySpec` and
:class:`~gateway.protocols.modbus.RegisterSpec` fields).  Every field carries its
documentation in ``dataclasses.fields(...)[i].metadata["doc"]``.  Scales are exact:
an integer or a string such as ``"0.01"`` or ``"1/100"``; a YAML float is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.errors import ProfileError
from gateway.protocols.errors import ProtocolError
from gateway.protocols.modbus import DataType, RegisterSpec, WordOrder
from gateway.protocols.quantities import Quantity

__all__ = ["MODBUS_MAX_READ", "Profile", "RelaySpec", "load_profile", "parse_profile"]

MODBUS_MAX_READ = 125
"""Most registers one FC03/FC04 request may ask for (Modbus application protocol)."""


@dataclass(frozen=True, slots=True)
class RelaySpec:
    """How to switch a meter's built-in relay (the supply to the tenant)."""

    kind: Literal["coil", "holding"] = field(
        metadata={"doc": "coil (FC05 write single coil) or holding (FC06 write register)"}
    )
    address: int = field(metadata={"doc": "coil or register address, 0-based"})
    on_value: int = field(
        metadata={"doc": "value that closes the relay (supply on); a coil takes 1 or 0"}
    )
    off_value: int = field(
        metadata={"doc": "value that opens the relay (supply off, tripped); a coil takes 1 or 0"}
    )

    def __post_init__(self) -> None:
        if self.kind not in ("coil", "holding"):
            raise ValueError(f"kind must be coil or holding, not {self.kind!r}")
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError(f"address {self.address} out of range 0..65535")
        top = 1 if self.kind == "coil" else 0xFFFF
        for value in (self.on_value, self.off_value):
            if not 0 <= value <= top:
                raise ValueError(f"{self.kind} value {value} out of range 0..{top}")
        if self.on_value == self.off_value:
            raise ValueError("on_value and off_value must differ")


@dataclass(frozen=True, slots=True)
class Profile:
    """Everything the gateway needs to poll one model of Modbus meter."""

    name: str = field(metadata={"doc": "registry key, lower case (e.g. sdm120)"})
    manufacturer: str = field(metadata={"doc": "who makes the meter"})
    model: str = field(metadata={"doc": "the model as printed on the nameplate"})
    function_code: int = field(
        metadata={"doc": "3 (read holding registers) or 4 (read input registers)"}
    )
    max_registers: int = field(
        metadata={"doc": "most registers the meter answers in one request (1..125)"}
    )
    word_order: WordOrder = field(
        metadata={"doc": "word order of 32-bit values: big (high word first) or little"}
    )
    turnaround_ms: int = field(
        metadata={"doc": "typical time from the end of a request to the start of the reply, ms"}
    )
    registers: tuple[RegisterSpec, ...] = field(
        metadata={"doc": "the quantities read on each poll, one RegisterSpec each"}
    )
    relay: RelaySpec | None = field(
        metadata={"doc": "how to trip and close the built-in relay, or none"}
    )
    description: str = field(default="", metadata={"doc": "one line for humans"})
    notes: str = field(
        default="", metadata={"doc": "sources, and any value that had to be assumed"}
    )
    source: str = field(default="", metadata={"doc": "file the profile was loaded from"})

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower() or " " in self.name:
            raise ValueError(f"name must be lower case without spaces, not {self.name!r}")
        if self.function_code not in (3, 4):
            raise ValueError(f"function_code must be 3 or 4, not {self.function_code}")
        if not 1 <= self.max_registers <= MODBUS_MAX_READ:
            raise ValueError(f"max_registers must be 1..{MODBUS_MAX_READ}")
        if not 0 <= self.turnaround_ms <= 10_000:
            raise ValueError(f"turnaround_ms {self.turnaround_ms} out of range 0..10000")
        if not self.registers:
            raise ValueError("a profile needs at least one register")
        seen: set[Quantity] = set()
        for reg in self.registers:
            if reg.quantity in seen:
                raise ValueError(f"quantity {reg.quantity.name} listed twice")
            seen.add(reg.quantity)
            if reg.words > self.max_registers:
                raise ValueError(f"{reg.quantity.name} is wider than max_registers")
        spans = sorted(self.registers, key=lambda r: r.address)
        for a, b in pairwise(spans):
            if b.address < a.end:
                raise ValueError(
                    f"registers overlap: {a.quantity.name} at 0x{a.address:04X}"
                    f" and {b.quantity.name} at 0x{b.address:04X}"
                )

    def register(self, quantity: Quantity) -> RegisterSpec:
        """The register of ``quantity``; ProfileError if this meter has none."""
        for reg in self.registers:
            if reg.quantity is quantity:
                return reg
        raise ProfileError(f"profile {self.name} has no register for {quantity.name}")


def _doc_keys(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _exact(value: object, what: str) -> Fraction:
    if isinstance(value, (bool, float)):
        raise ValueError(
            f"{what} must be an integer or a string like '0.01' or '1/100', not {value!r}"
        )
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, str):
        try:
            return Fraction(value.strip())
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"{what} {value!r} is not an exact number") from exc
    raise ValueError(f"{what} must be an integer or a string, not {type(value).__name__}")


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, not {value!r}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {value!r}")
    return value


def _check_keys(data: Mapping[str, Any], cls: type, where: str, optional: set[str]) -> None:
    allowed = _doc_keys(cls)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    missing = sorted(allowed - optional - set(data))
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)}")


def _register(data: object, index: int) -> RegisterSpec:
    where = f"registers[{index}]"
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping")
    _check_keys(data, RegisterSpec, where, optional={"scale"})
    quantity_name = _str(data["quantity"], f"{where}.quantity")
    try:
        quantity = Quantity[quantity_name]
    except KeyError:
        raise ValueError(
            f"{where}.quantity {quantity_name!r} unknown;"
            f" one of {', '.join(q.name for q in Quantity)}"
        ) from None
    type_name = _str(data["type"], f"{where}.type")
    try:
        type_ = DataType(type_name)
    except ValueError:
        raise ValueError(
            f"{where}.type {type_name!r} unknown; one of {', '.join(t.value for t in DataType)}"
        ) from None
    try:
        return RegisterSpec(
            quantity=quantity,
            address=_int(data["address"], f"{where}.address"),
            type=type_,
            unit=str(data["unit"]),
            scale=_exact(data.get("scale", 1), f"{where}.scale"),
        )
    except ProtocolError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _relay(data: object) -> RelaySpec | None:
    if data is None or data == "none":
        return None
    if not isinstance(data, Mapping):
        raise ValueError("relay must be 'none' or a mapping")
    _check_keys(data, RelaySpec, "relay", optional=set())
    kind = _str(data["kind"], "relay.kind")
    if kind not in ("coil", "holding"):
        raise ValueError(f"relay.kind must be coil or holding, not {kind!r}")
    return RelaySpec(
        kind="coil" if kind == "coil" else "holding",
        address=_int(data["address"], "relay.address"),
        on_value=_int(data["on_value"], "relay.on_value"),
        off_value=_int(data["off_value"], "relay.off_value"),
    )


def parse_profile(data: object, source: str = "<memory>") -> Profile:
    """A :class:`Profile` from the mapping of a YAML document; ProfileError names ``source``."""
    try:
        if not isinstance(data, Mapping):
            raise ValueError("a profile must be a YAML mapping")
        _check_keys(data, Profile, "profile", optional={"description", "notes", "source"})
        if "source" in data:
            raise ValueError("'source' is set by the loader, not by the file")
        registers = data["registers"]
        if not isinstance(registers, list):
            raise ValueError("registers must be a list")
        word_order = _str(data["word_order"], "word_order")
        if word_order not in ("big", "little"):
            raise ValueError(f"word_order must be big or little, not {word_order!r}")
        return Profile(
            name=_str(data["name"], "name"),
            manufacturer=_str(data["manufacturer"], "manufacturer"),
            model=str(data["model"]),
            function_code=_int(data["function_code"], "function_code"),
            max_registers=_int(data["max_registers"], "max_registers"),
            word_order=WordOrder(word_order),
            turnaround_ms=_int(data["turnaround_ms"], "turnaround_ms"),
            registers=tuple(_register(r, i) for i, r in enumerate(registers)),
            relay=_relay(data["relay"]),
            description=_str(data.get("description", ""), "description").strip(),
            notes=_str(data.get("notes", ""), "notes").strip(),
            source=source,
        )
    except ValueError as exc:
        raise ProfileError(f"{source}: {exc}") from exc


def load_profile(path: str | Path) -> Profile:
    """Read and check one profile file; ProfileError names the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    return parse_profile(data, str(path))
