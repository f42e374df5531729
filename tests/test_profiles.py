"""Meter profiles: built-ins load and are consistent, the registry refuses duplicates,
bad files are refused with the file and the problem named, and the CLI shows them."""

from __future__ import annotations

from dataclasses import fields
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import Meter, SerialBus
from gateway.drivers import profiles
from gateway.drivers.base import Transaction
from gateway.drivers.jobs import ReadJob
from gateway.drivers.modbus import ModbusDriver
from gateway.drivers.profiles import Profile, ProfileError, Registry, RelaySpec, load_profile
from gateway.protocols.modbus import DataType, ReadReply, RegisterSpec, WordOrder, encode_reply
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


# --- hand-worked register dumps ----------------------------------------------------------
#
# Each test below is a meter's reply written out word by word, as a datasheet reader
# would work it out: the float32 bit patterns (sign | 8-bit exponent, bias 127 |
# 23-bit fraction), the 32-bit integers split into a high and a low word, the scale and
# the CT ratio, down to the integer the gateway stores in its unit (Wh, W, dV, mA, cHz,
# milli).  The words go through the driver exactly as on the wire: the planned read
# requests, each reply encoded as an RTU frame, parsed by the driver's reader and
# decoded by ``ModbusDriver.finish`` (the integer hot path), which must also agree with
# the exact Fraction path (``Plan.decode``).  A register address or scale in a profile
# that disagrees with its datasheet puts a word in a gap or scales it wrongly, and the
# test fails.  Gap registers answer 0xFFFF (as float32 0xFFFFFFFF is a NaN, which the
# decoder refuses, so a float register that landed in a gap would fail loudly).

DUMP_BUS = SerialBus("mb", "/dev/null", "modbus", baud=9600, parity="E")
GAP = 0xFFFF


def feed_dump(
    name: str, dump: dict[int, int], *, ct: int = 1, pt: int = 1
) -> tuple[list[tuple[int, int]], dict[Quantity, int]]:
    """The planned (start, count) reads of profile ``name`` and the values decoded from
    ``dump`` (register address -> 16-bit word) by the driver's own path."""
    profile = profiles.get(name)
    meter = Meter("m", "mb", unit_id=7, profile=name, ct_ratio=ct, pt_ratio=pt)
    driver = ModbusDriver(meter, DUMP_BUS)
    job = ReadJob("m")
    transactions = driver.plan(job)
    reads = driver.poll_plan.requests
    replies: list[tuple[Transaction, object]] = []
    covered: set[int] = set()
    for transaction, read in zip(transactions, reads, strict=True):
        addresses = range(read.start, read.start + read.count)
        covered.update(addresses)
        words = tuple(dump.get(a, GAP) for a in addresses)
        wire = encode_reply(ReadReply(7, profile.function_code, words))
        assert transaction.new_reader is not None
        reply = transaction.new_reader().feed(wire)
        assert reply == ReadReply(7, profile.function_code, words)
        replies.append((transaction, reply))
    missing = sorted(a for a in dump if a not in covered)
    assert not missing, f"dump words at {[hex(a) for a in missing]} are never read"
    result = driver.finish(job, replies, 0)
    assert result.ok and result.reading is not None
    values = result.reading.values
    exact = driver.poll_plan.decode(
        [r.registers for _, r in replies],  # type: ignore[attr-defined]
        profile.word_order,
        ct=ct,
        pt=pt,
    )
    assert values == exact
    return [(r.start, r.count) for r in reads], values


def test_dump_sdm630() -> None:
    # Eastron SDM630 V2, FC04 input registers, IEEE 754 float32, high word first.
    # At 9600 8E1 a gap register costs 2 chars (2.29 ms) and a request 13 chars +
    # 20 ms + t3.5 (38.9 ms): 0x0000..0x000B is one run, 0x000C..0x0033 (40 registers)
    # is skipped, and 0x0034..0x004B (gaps of 8 and 6) is read whole.
    dump = {
        # 0x0000 L1 volts 230.0 = 1.796875 x 2^7: exponent 127+7 = 134 = 1000_0110,
        # fraction .796875 = .110011 -> 0 10000110 1100110... = 0x4366_0000 -> 2300 dV
        0x0000: 0x4366,
        0x0001: 0x0000,
        # 0x0002 L2 volts 231.5 = 1.80859375 x 2^7, fraction .80859375 = 207/256 =
        # .11001111 -> 0 10000110 11001111000... = 0x4367_8000 -> 2315 dV
        0x0002: 0x4367,
        0x0003: 0x8000,
        # 0x0004 L3 volts 229.7 is not exact: 229.7/128 = 1.79453125, fraction
        # .79453125 x 2^23 = 6665011.2 -> 6665011 = 0x65B333; with exponent 134:
        # 0x4365_B333 = 128 + 6665011/65536 = 229.69999695 V = 2296.9999695 dV -> 2297
        0x0004: 0x4365,
        0x0005: 0xB333,
        # 0x0006 L1 amps 5.0 = 1.25 x 2^2: exponent 129 = 1000_0001, fraction .01 ->
        # 0 10000001 0100... = 0x40A0_0000 -> 5000 mA
        0x0006: 0x40A0,
        0x0007: 0x0000,
        # 0x0008 L2 amps 4.25 = 1.0625 x 2^2, fraction .0001 -> 0x4088_0000 -> 4250 mA
        0x0008: 0x4088,
        0x0009: 0x0000,
        # 0x000A L3 amps 0.5 = 1.0 x 2^-1: exponent 126 = 0111_1110 -> 0x3F00_0000
        # -> 500 mA
        0x000A: 0x3F00,
        0x000B: 0x0000,
        # 0x0034 total system power 3450.5 W = 110101111010.1b = 1.101011110101b x 2^11:
        # exponent 138 = 1000_1010 -> 0 10001010 10101111010100... = 0x4557_A800.
        # 3450.5 W rounds half to even -> 3450 W
        0x0034: 0x4557,
        0x0035: 0xA800,
        # 0x003E total power factor 0.95 = 1.9 x 2^-1: fraction .9 x 2^23 = 7549747.2 ->
        # 7549747 = 0x733333; exponent 126 -> 0x3F73_3333 = 0.94999998808 -> 950 milli
        0x003E: 0x3F73,
        0x003F: 0x3333,
        # 0x0046 frequency 49.98 = 1.561875 x 2^5: fraction .561875 x 2^23 = 4713349.12
        # -> 4713349 = 0x47EB85; exponent 132 = 1000_0100 -> 0x4247_EB85 =
        # 32 + 4713349/262144 = 49.97999954 Hz = 4997.999954 cHz -> 4998
        0x0046: 0x4247,
        0x0047: 0xEB85,
        # 0x0048 total import 1234.5 kWh = 10011010010.1b = 1.00110100101b x 2^10:
        # exponent 137 = 1000_1001 -> 0 10001001 00110100101000... = 0x449A_5000
        # -> 1 234 500 Wh
        0x0048: 0x449A,
        0x0049: 0x5000,
        # 0x004A total export 0.25 kWh = 1.0 x 2^-2: exponent 125 -> 0x3E80_0000 -> 250 Wh
        0x004A: 0x3E80,
        0x004B: 0x0000,
    }
    spans, values = feed_dump("sdm630", dump)
    assert spans == [(0x0000, 12), (0x0034, 24)]
    assert values == {
        Quantity.VOLTAGE_A: 2300,
        Quantity.VOLTAGE_B: 2315,
        Quantity.VOLTAGE_C: 2297,
        Quantity.CURRENT_A: 5000,
        Quantity.CURRENT_B: 4250,
        Quantity.CURRENT_C: 500,
        Quantity.POWER: 3450,
        Quantity.POWER_FACTOR: 950,
        Quantity.FREQUENCY: 4998,
        Quantity.ENERGY_IMPORT: 1_234_500,
        Quantity.ENERGY_EXPORT: 250,
    }


def test_dump_ddsu666() -> None:
    # Chint DDSU666, FC03 holding registers, float32, high word first; power in kW.
    # Reads: 0x2000..0x200F (gaps of 4 and 2 registers are cheaper than a request)
    # and 0x4000..0x400B (a gap of 8).
    dump = {
        # 0x2000 U 220.0 V = 1.71875 x 2^7: exponent 134, fraction .10111 ->
        # 0 10000110 10111000... = 0x435C_0000 -> 2200 dV
        0x2000: 0x435C,
        0x2001: 0x0000,
        # 0x2002 I 10.0 A = 1.25 x 2^3: exponent 130 = 1000_0010 -> 0x4120_0000 -> 10000 mA
        0x2002: 0x4120,
        0x2003: 0x0000,
        # 0x2004 P 2.2 kW = 1.1 x 2^1: fraction .1 x 2^23 = 838860.8 -> 838861 = 0x0CCCCD
        # (rounded up); exponent 128 -> 0x400C_CCCD = 2 + 838861/4194304 =
        # 2.2000000477 kW = 2200.0000477 W -> 2200 W
        0x2004: 0x400C,
        0x2005: 0xCCCD,
        # 0x200A PF -0.5: sign bit set, 1.0 x 2^-1 (exponent 126) -> 0xBF00_0000 -> -500
        0x200A: 0xBF00,
        0x200B: 0x0000,
        # 0x200E frequency 50.0 = 1.5625 x 2^5: exponent 132, fraction .1001 ->
        # 0x4248_0000 -> 5000 cHz
        0x200E: 0x4248,
        0x200F: 0x0000,
        # 0x4000 ImpEp 100.01 kWh = 1.56265625 x 2^6: fraction .56265625 x 2^23 =
        # 4719902.72 -> 4719903 = 0x48051F; exponent 133 = 1000_0101 ->
        # 0 10000101 10010000000010100011111 = 0x42C8_051F = 64 + 4719903/131072 =
        # 100.0100021 kWh = 100010.0021 Wh -> 100010 Wh
        0x4000: 0x42C8,
        0x4001: 0x051F,
        # 0x400A ExpEp 0.0 kWh -> 0x0000_0000 -> 0 Wh
        0x400A: 0x0000,
        0x400B: 0x0000,
    }
    spans, values = feed_dump("ddsu666", dump)
    assert spans == [(0x2000, 16), (0x4000, 12)]
    assert values == {
        Quantity.VOLTAGE_A: 2200,
        Quantity.CURRENT_A: 10_000,
        Quantity.POWER: 2200,
        Quantity.POWER_FACTOR: -500,
        Quantity.FREQUENCY: 5000,
        Quantity.ENERGY_IMPORT: 100_010,
        Quantity.ENERGY_EXPORT: 0,
    }


def test_dump_dtsu666() -> None:
    # Chint DTSU666, FC03, float32 high word first; the 0x20xx floats count the
    # manual's units: 0.1 V, 0.001 A, 0.1 W, 0.001 (PF), 0.01 Hz; energies plain kWh.
    # Reads: 0x101E..0x1029 (gap of 8); 0x2006..0x2013; then 0x202A and 0x2044 alone
    # (their gaps, 22 and 24 registers, cost more than a request; and 0x2006..0x2045
    # would be 64 registers, over the 40 allowed).
    dump = {
        # 0x101E ImpEp 5678.25 kWh = 1011000101110.01b = 1.01100010111001b x 2^12:
        # exponent 139 = 1000_1011 -> 0 10001011 0110001011100100... = 0x45B1_7200
        # -> 5 678 250 Wh
        0x101E: 0x45B1,
        0x101F: 0x7200,
        # 0x1028 ExpEp 12.5 kWh = 1.1001b x 2^3: exponent 130 -> 0x4148_0000 -> 12 500 Wh
        0x1028: 0x4148,
        0x1029: 0x0000,
        # 0x2006 Ua 2301.0 (x 0.1 V = 230.1 V) = 100011111101b = 1.00011111101b x 2^11:
        # exponent 138 = 1000_1010 -> 0 10001010 00011111101000... = 0x450F_D000 -> 2301 dV
        0x2006: 0x450F,
        0x2007: 0xD000,
        # 0x2008 Ub 2299.0 = 100011111011b -> 0x450F_B000 -> 2299 dV
        0x2008: 0x450F,
        0x2009: 0xB000,
        # 0x200A Uc 2305.5 (230.55 V) = 100100000001.1b = 1.0010000000011b x 2^11 ->
        # 0x4510_1800; 2305.5 dV rounds half to even -> 2306 dV
        0x200A: 0x4510,
        0x200B: 0x1800,
        # 0x200C Ia 12345.0 (x 0.001 A) = 11000000111001b = 1.1000000111001b x 2^13:
        # exponent 140 = 1000_1100 -> 0 10001100 1000000111001000... = 0x4640_E400
        # -> 12345 mA
        0x200C: 0x4640,
        0x200D: 0xE400,
        # 0x200E Ib 0.0 -> 0 mA
        0x200E: 0x0000,
        0x200F: 0x0000,
        # 0x2010 Ic 800.25 = 1100100000.01b = 1.10010000001b x 2^9: exponent 136 =
        # 1000_1000 -> 0x4448_1000; 800.25 mA -> 800 mA
        0x2010: 0x4448,
        0x2011: 0x1000,
        # 0x2012 Pt -15000.0 (x 0.1 W = -1500 W, exporting): sign 1, 15000 =
        # 11101010011000b = 1.1101010011b x 2^13 -> 1 10001100 11010100110... =
        # 0xC66A_6000 -> -1500 W
        0x2012: 0xC66A,
        0x2013: 0x6000,
        # 0x202A PFt 985.0 (x 0.001) = 1111011001b = 1.111011001b x 2^9 -> 0x4476_4000
        # -> 985 milli
        0x202A: 0x4476,
        0x202B: 0x4000,
        # 0x2044 Freq 5002.0 (x 0.01 Hz) = 1001110001010b = 1.001110001010b x 2^12:
        # exponent 139 -> 0x459C_5000 -> 5002 cHz
        0x2044: 0x459C,
        0x2045: 0x5000,
    }
    spans, values = feed_dump("dtsu666", dump)
    assert spans == [(0x101E, 12), (0x2006, 14), (0x202A, 2), (0x2044, 2)]
    assert values == {
        Quantity.ENERGY_IMPORT: 5_678_250,
        Quantity.ENERGY_EXPORT: 12_500,
        Quantity.VOLTAGE_A: 2301,
        Quantity.VOLTAGE_B: 2299,
        Quantity.VOLTAGE_C: 2306,
        Quantity.CURRENT_A: 12_345,
        Quantity.CURRENT_B: 0,
        Quantity.CURRENT_C: 800,
        Quantity.POWER: -1500,
        Quantity.POWER_FACTOR: 985,
        Quantity.FREQUENCY: 5002,
    }


def test_dump_adw300_with_ct_ratio() -> None:
    # Acrel ADW300 behind 300/5 A current transformers: CT ratio 60, PT 1.  FC03,
    # integers, high word first.  Energy E = data x PT x CT x 0.01 kWh, so one count
    # of an energy register is 10 Wh x 60 = 600 Wh; current 0.01 A x 60 = 600 mA a
    # count; power 0.001 kW = 1 W x 60 = 60 W a count; voltage, PF and frequency are
    # not scaled by the CT.  Reads: 0x0000..0x0015 (gaps of 8) and 0x0061..0x0077
    # (gaps of 3 and 11); the 75 registers between are skipped.
    # A site exporting solar: import 100 counts, export 123556 counts.
    dump = {
        # 0x0000 combined (int32) = import - export = 100 - 123556 = -123456;
        # two's complement 2^32 - 123456 = 0xFFFE_1DC0 -> -123456 x 600 = -74 073 600 Wh
        0x0000: 0xFFFE,
        0x0001: 0x1DC0,
        # 0x000A import (uint32) 100 = 0x0000_0064 -> 100 x 600 = 60 000 Wh
        0x000A: 0x0000,
        0x000B: 0x0064,
        # 0x0014 export (uint32) 123556 = 0x0001_E2A4 (high word 1 = 65536,
        # + 0xE2A4 = 58020) -> 123556 x 600 = 74 133 600 Wh
        0x0014: 0x0001,
        0x0015: 0xE2A4,
        # 0x0061..0x0063 phase volts (uint16, 0.1 V = 1 dV): 0x08FD = 2301,
        # 0x08FC = 2300, 0x0901 = 2305 dV
        0x0061: 0x08FD,
        0x0062: 0x08FC,
        0x0063: 0x0901,
        # 0x0064..0x0066 phase amps (uint16, 0.01 A): 0x01A1 = 417 (4.17 A secondary)
        # -> 417 x 600 = 250 200 mA; 0x01F4 = 500 -> 300 000 mA; 0 -> 0 mA
        0x0064: 0x01A1,
        0x0065: 0x01F4,
        0x0066: 0x0000,
        # 0x006A total kW (int16, 0.001 kW): 0xFC18 = 0xFC18 - 0x10000 = -1000 ->
        # -1.000 kW secondary -> -1000 W x 60 = -60 000 W
        0x006A: 0xFC18,
        # 0x0076 total PF (int16, 0.001): 0x03D4 = 980 -> 980 milli
        0x0076: 0x03D4,
        # 0x0077 frequency (uint16, 0.01 Hz): 0x1388 = 5000 -> 5000 cHz
        0x0077: 0x1388,
    }
    spans, values = feed_dump("adw300", dump, ct=60)
    assert spans == [(0x0000, 22), (0x0061, 23)]
    assert values == {
        Quantity.ENERGY_COMBINED: -74_073_600,
        Quantity.ENERGY_IMPORT: 60_000,
        Quantity.ENERGY_EXPORT: 74_133_600,
        Quantity.VOLTAGE_A: 2301,
        Quantity.VOLTAGE_B: 2300,
        Quantity.VOLTAGE_C: 2305,
        Quantity.CURRENT_A: 250_200,
        Quantity.CURRENT_B: 300_000,
        Quantity.CURRENT_C: 0,
        Quantity.POWER: -60_000,
        Quantity.POWER_FACTOR: 980,
        Quantity.FREQUENCY: 5000,
    }


def test_dump_generic() -> None:
    # The generic documented layout: FC03, integers, high word first, ten contiguous
    # registers read in one request 0x0000..0x0009.
    dump = {
        # 0x0000 import (uint32, 0.01 kWh = 10 Wh a count): 0x0012_D687 =
        # 0x12 x 65536 + 0xD687 = 1179648 + 54919 = 1234567 -> 12 345 670 Wh
        0x0000: 0x0012,
        0x0001: 0xD687,
        # 0x0002 export (uint32): 0x0000_0309 = 777 -> 7770 Wh
        0x0002: 0x0000,
        0x0003: 0x0309,
        # 0x0004 voltage (uint16, 0.1 V): 0x0906 = 2310 -> 2310 dV
        0x0004: 0x0906,
        # 0x0005 current (uint16, 0.01 A = 10 mA a count): 0x0BB8 = 3000 -> 30 000 mA
        0x0005: 0x0BB8,
        # 0x0006 power (int32, 1 W): 0x0001_1170 = 65536 + 4464 = 70000 W; the high word
        # first (swapped it would read 0x1170_0001 = 292 552 705 W)
        0x0006: 0x0001,
        0x0007: 0x1170,
        # 0x0008 PF (int16, 0.001): 0xFC7C = 0xFC7C - 0x10000 = -900 -> -900 milli
        0x0008: 0xFC7C,
        # 0x0009 frequency (uint16, 0.01 Hz): 0x1383 = 4995 -> 4995 cHz
        0x0009: 0x1383,
    }
    spans, values = feed_dump("generic", dump)
    assert spans == [(0x0000, 10)]
    assert values == {
        Quantity.ENERGY_IMPORT: 12_345_670,
        Quantity.ENERGY_EXPORT: 7770,
        Quantity.VOLTAGE_A: 2310,
        Quantity.CURRENT_A: 30_000,
        Quantity.POWER: 70_000,
        Quantity.POWER_FACTOR: -900,
        Quantity.FREQUENCY: 4995,
    }
