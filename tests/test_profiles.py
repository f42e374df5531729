"""Meter profiles: built-ins load and are consistent, the registry refuses duplicates,
bad files are refused with the file and the problem named, and the CLI shows them."""

from __future__ import annotations

from dataclasses import fields
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.drivers import profiles
from gateway.drivers.profiles import Profile, ProfileError, Registry, RelaySpec, load_profile
from gateway.protocols.modbus import DataType, RegisterSpec, WordOrder
from gateway.protocols.quantities import Quantity

BUILTIN = ["adw300", "ddsu666", "dtsu666", "generic", "sdm120", "sdm630"]

GOOD = """\
name: mymeter
manufacturer: Acme
model: M1
function_code: 3
max_registers: 20
word_order: little
turnaround_ms: 15
relay: {kind: holding, address: 0x0100, on_value: 1, off_value: 2}
registers:
  - {quantity: ENERGY_IMPORT, address: 0x0000, type: uint32, unit: Wh, scale: 10}
  - {quantity: VOLTAGE_A, address: 0x0002, type: uint16, unit: V, scale: "1/10"}
"""


def write(tmp_path: Path, text: str, name: str = "meter.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_names() -> None:
    assert profiles.names() == BUILTIN


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_profile_is_consistent(name: str) -> None:
    p = profiles.get(name)
    assert p.name == name
    assert p.function_code in (3, 4)
    assert 1 <= p.max_registers <= 125
    assert p.source.endswith(f"{name}.yaml")
    ordered = sorted(p.registers, key=lambda r: r.address)
    for a, b in pairwise(ordered):
        assert a.end <= b.address, f"{a.quantity.name} overlaps {b.quantity.name}"
    assert len({r.quantity for r in p.registers}) == len(p.registers)
    assert Quantity.ENERGY_IMPORT in {r.quantity for r in p.registers}
    for reg in p.registers:
        assert isinstance(reg.scale, Fraction)
        assert reg.factor > 0


def test_eastron_and_chint_facts() -> None:
    sdm120 = profiles.get("sdm120")
    assert (sdm120.function_code, sdm120.word_order, sdm120.relay) == (4, WordOrder.BIG, None)
    assert sdm120.register(Quantity.ENERGY_IMPORT).address == 0x0048
    sdm630 = profiles.get("sdm630")
    assert sdm630.register(Quantity.POWER).address == 0x0034
    assert sdm630.register(Quantity.VOLTAGE_C).address == 0x0004
    ddsu = profiles.get("ddsu666")
    assert ddsu.function_code == 3
    assert ddsu.register(Quantity.POWER).unit == "kW"
    dtsu = profiles.get("dtsu666")
    assert dtsu.register(Quantity.VOLTAGE_A).scale == Fraction(1, 10)
    adw = profiles.get("adw300")
    assert adw.relay == RelaySpec("holding", 0x0057, 0x5555, 0xAAAA)
    assert adw.register(Quantity.ENERGY_IMPORT).type is DataType.UINT32
    generic = profiles.get("generic")
    assert generic.relay is not None and generic.relay.kind == "coil"
    with pytest.raises(ProfileError, match="no register for ENERGY_T1"):
        sdm120.register(Quantity.ENERGY_T1)


def test_every_field_has_a_doc() -> None:
    for cls in (Profile, RelaySpec, RegisterSpec):
        for f in fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"


def test_unknown_name_lists_the_known() -> None:
    with pytest.raises(ProfileError, match="no meter profile 'nope'; known: adw300"):
        profiles.get("nope")


def test_user_profile_loads(tmp_path: Path) -> None:
    p = load_profile(write(tmp_path, GOOD))
    assert p.word_order is WordOrder.LITTLE
    assert p.relay == RelaySpec("holding", 0x0100, 1, 2)
    energy = p.register(Quantity.ENERGY_IMPORT)
    assert (energy.scale, energy.factor) == (Fraction(10), Fraction(10))
    assert p.register(Quantity.VOLTAGE_A).factor == 1  # 1/10 V x 10 dV/V


def test_duplicate_name_refused(tmp_path: Path) -> None:
    registry = Registry()
    first = registry.add_file(write(tmp_path, GOOD, "a.yaml"))
    with pytest.raises(ProfileError, match="'mymeter' is already registered") as info:
        registry.add_file(write(tmp_path, GOOD, "b.yaml"))
    assert "b.yaml" in str(info.value) and "a.yaml" in str(info.value)
    assert registry.get("mymeter") is first
    assert registry.names() == ["mymeter"]
    # a user's file cannot shadow a built-in either
    with pytest.raises(ProfileError, match="already registered"):
        profiles.register(profiles.get("sdm120"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("scale: 10", "scale: 0.1"), "must be an integer or a string"),
        (("ENERGY_IMPORT", "ENERGY_SOLD"), "unknown; one of ENERGY_IMPORT"),
        (("type: uint16", "type: float64"), "registers\\[1\\].type 'float64' unknown"),
        (("address: 0x0002", "address: 0x0001"), "registers overlap: ENERGY_IMPORT"),
        (("function_code: 3", "function_code: 6"), "function_code must be 3 or 4"),
        (("max_registers: 20", "max_registers: 200"), "max_registers must be 1..125"),
        (("word_order: little", "word_order: middle"), "word_order must be big or little"),
        (("turnaround_ms: 15\n", ""), "missing key\\(s\\) turnaround_ms"),
        (("model: M1", "model: M1\ncolour: red"), "unknown key\\(s\\) colour"),
        (("unit: V,", "unit: kWh,"), "cannot convert 'kWh' into dV"),
        (("on_value: 1, off_value: 2", "on_value: 1, off_value: 1"), "must differ"),
        (("kind: holding", "kind: bit"), "relay.kind must be coil or holding"),
        (('scale: "1/10"', 'scale: "1/0"'), "not an exact number"),
        (("name: mymeter", "name: My Meter"), "lower case"),
    ],
)
def test_bad_profile_names_file_and_problem(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert str(info.value).startswith(f"{path}: ")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "missing.yaml")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(write(tmp_path, "name: [unclosed"))
    with pytest.raises(ProfileError, match="must be a YAML mapping"):
        load_profile(write(tmp_path, "- just\n- a list\n"))


# --- CLI -----------------------------------------------------------------------------------


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == BUILTIN


def test_cli_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "show", "adw300"]) == 0
    out = capsys.readouterr().out
    assert "relay          holding 0x0057: on 0x5555, off 0xaaaa" in out
    assert "0x000A   ENERGY_IMPORT   uint32   1/100   kWh   -> Wh    x10" in out


def test_cli_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "plan", "sdm120", "--baud", "9600", "--parity", "N"]) == 0
    out = capsys.readouterr().out
    assert "read 0x0000 x32" in out and "read 0x0046 x6" in out
    assert "planned: 2 requests" in out and "one per register: 7 requests" in out


def test_cli_user_profile_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiles, "_BUILTIN", None)  # a fresh registry, dropped afterwards
    path = write(tmp_path, GOOD.replace("mymeter", "clitest"))
    assert main(["profile", "--profile-file", str(path), "show", "clitest"]) == 0
    assert "Acme" in capsys.readouterr().out
    assert main(["profile", "show", "nope"]) == 2
    assert "no meter profile 'nope'" in capsys.readouterr().err
