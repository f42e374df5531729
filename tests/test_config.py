"""Configuration: typed model, located errors (file:line:column), the example, the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import (
    FlatTariff,
    GatewayConfig,
    TieredTariff,
    TouTariff,
    example_config_path,
    load_config,
    parse_config,
)
from gateway.errors import ConfigError

DATA = Path(__file__).parent / "data" / "config"
GOOD = (DATA / "good_minimal.yaml").read_text(encoding="utf-8")
EXAMPLE = example_config_path().read_text(encoding="utf-8")
GATEWAY = str(Path(sys.executable).with_name("gateway"))


def errors_of(text: str, filename: str = "t.yaml") -> list[ConfigError]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, filename)
    return caught.value.errors


# file -> every error it must raise: (line, column, message fragment), in file order
BAD_FILES: dict[str, list[tuple[int, int, str]]] = {
    "bad_syntax.yaml": [(10, 4, "YAML syntax error")],
    "bad_unknown_key.yaml": [(11, 5, "key 'baudrate' in serial bus 'bus-b'; did you mean 'baud'?")],
    "bad_float_price.yaml": [(30, 12, "integers in 0.0001 yuan/kWh; 0.5 yuan/kWh is written 5000")],
    "bad_string_price.yaml": [(30, 12, "0.5 yuan/kWh is written 5000 (got a string '0.5')")],
    "bad_parity.yaml": [(8, 13, "parity: must be one of N, E, O, not 'X'")],
    "bad_duplicate_meter.yaml": [(16, 9, "duplicate meter id 'm1' (first at line 12)")],
    "bad_duplicate_address.yaml": [(22, 14, "000000000001 is already used on bus 'bus-a'")],
    "bad_unknown_bus.yaml": [(17, 10, "unknown bus 'bus-c'; did you mean 'bus-b'?")],
    "bad_unknown_profile.yaml": [(19, 14, "unknown profile 'sdm12'; did you mean 'sdm120'?")],
    "bad_duplicate_key.yaml": [(7, 5, "duplicate key 'port' (first at line 6)")],
    "bad_wrong_type.yaml": [(16, 15, "ct_ratio: must be an integer, not a string 'forty'")],
    "bad_unit_id_range.yaml": [(18, 14, "unit_id: must be between 1 and 247, not 248")],
    "bad_unknown_account.yaml": [(15, 14, "unknown account 'acc2'; did you mean 'acc1'?")],
    "bad_unknown_tariff.yaml": [(24, 13, "unknown tariff 'flta'; did you mean 'flat'?")],
    "bad_missing_port.yaml": [(8, 5, "serial bus 'bus-b' is missing required key 'port'")],
    "bad_unquoted_address.yaml": [(14, 14, "write the address in quotes")],
    "bad_naive_effective.yaml": [(28, 16, "effective: needs a UTC offset")],
    "bad_tou.yaml": [
        (20, 17, "slots must be in time order; 07:30 is not after 08:00"),
        (21, 32, "slot 1 has no price in 'prices'"),
    ],
    "bad_several.yaml": [
        (7, 11, "baud: must be one of 300, 600"),
        (11, 14, "address: must be 12 decimal digits, not '12345'"),
        (14, 3, "unknown key 'prot' in uplink; did you mean 'port'?"),
    ],
}


def test_every_bad_file_is_checked() -> None:
    assert sorted(p.name for p in DATA.glob("bad_*.yaml")) == sorted(BAD_FILES)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_located_exactly(name: str) -> None:
    path = DATA / name
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = caught.value.errors
    assert [(e.line, e.column) for e in found] == [(ln, col) for ln, col, _ in BAD_FILES[name]]
    for error, (_, _, fragment) in zip(found, BAD_FILES[name], strict=True):
        assert error.file == str(path)
        assert fragment in error.message
    first = caught.value
    assert (first.file, first.line, first.column) == (str(path), found[0].line, found[0].column)


def test_first_error_says_how_many_more() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(DATA / "bad_several.yaml")
    assert str(caught.value).endswith("(and 2 more)")
    assert str(caught.value.errors[0]).startswith(f"{DATA / 'bad_several.yaml'}:7:11: baud:")


def test_the_good_minimal_file_and_its_defaults() -> None:
    cfg = load_config(DATA / "good_minimal.yaml")
    assert cfg.source == str(DATA / "good_minimal.yaml")
    assert cfg.timezone == "Asia/Shanghai"
    a, b = cfg.serial_buses
    # dlt645 defaults to 2400 8E1, modbus to 9600 8N1
    assert (a.baud, a.data_bits, a.parity, a.stop_bits) == (2400, 8, "E", 1)
    assert (b.baud, b.data_bits, b.parity, b.stop_bits) == (9600, 8, "N", 1)
    assert a.line.char_bits == 11 and b.line.char_bits == 10
    assert (a.timeout, a.retries) == (None, None)
    m1 = cfg.meter("m1")
    assert (m1.name, m1.ct_ratio, m1.pt_ratio, m1.ratio, m1.role, m1.area) == (
        "m1",
        1,
        1,
        1,
        "customer",
        None,
    )
    assert cfg.account("acc1").trip_on_arrears is True
    up = cfg.uplink
    assert (up.host, up.port, up.prefix, up.client_id, up.keepalive, up.tls) == (
        "localhost",
        1883,
        "gw",
        "gateway-gw-test",
        60,
        False,
    )
    assert cfg.store.max_bytes == 256 * 1024 * 1024
    assert cfg.console.port is None and cfg.console.baud == 115200


def test_tls_moves_the_default_port() -> None:
    cfg = parse_config(GOOD.replace("  host: localhost", "  host: localhost\n  tls: yes"))
    assert (cfg.uplink.tls, cfg.uplink.port) == (True, 8883)


def test_the_example_is_a_realistic_mall() -> None:
    cfg = load_config(example_config_path())
    assert isinstance(cfg, GatewayConfig)
    dlt, mod = cfg.serial_buses
    assert (dlt.protocol, dlt.baud, dlt.parity, len(cfg.meters_on(dlt.name))) == (
        "dlt645",
        2400,
        "E",
        4,
    )
    assert (mod.protocol, mod.baud, mod.parity) == ("modbus", 9600, "N")
    assert {"sdm120", "ddsu666"} <= {m.profile for m in cfg.meters_on(mod.name)}
    gates = {m.area for m in cfg.meters if m.role == "gate"}
    assert gates == {m.area for m in cfg.meters} == {"T1", "T2"}
    assert {a.type for a in cfg.accounts} == {"prepaid", "postpaid", "unbilled"}
    assert {t.kind for t in cfg.tariffs} == {"flat", "tou", "tiered"}
    tiered = cfg.tariff("residential-tiered")
    assert isinstance(tiered, TieredTariff)
    assert tiered.thresholds == (2_760_000, 4_800_000)  # Wh a year
    base, second, third = tiered.prices
    assert (second - base, third - base) == (500, 3000)  # +0.05 and +0.30 yuan/kWh
    tou = cfg.tariff("commercial-tou")
    assert isinstance(tou, TouTariff) and set(tou.prices) == {1, 2, 3, 4}
    assert (cfg.uplink.tls, cfg.uplink.port) == (True, 8883)


def test_tariff_versions_take_effect_at_their_time() -> None:
    cfg = load_config(example_config_path())
    before = datetime(2025, 6, 30, 15, 59, 59, tzinfo=UTC)  # 23:59:59 in Shanghai
    after = datetime(2025, 6, 30, 16, 0, tzinfo=UTC)  # 1 July 00:00 in Shanghai
    old, new = cfg.tariff("commercial-flat", before), cfg.tariff("commercial-flat", after)
    assert isinstance(old, FlatTariff) and isinstance(new, FlatTariff)
    assert (old.version, old.price, new.version, new.price) == (1, 8500, 2, 8200)
    assert cfg.tariff("commercial-flat").version == 2
    with pytest.raises(KeyError):
        cfg.tariff("commercial-flat", datetime(2023, 1, 1, tzinfo=UTC))


def test_tou_slot_lookup() -> None:
    tou = load_config(example_config_path()).tariff("commercial-tou")
    assert isinstance(tou, TouTariff)
    assert [tou.slot_at(time(h, m)) for h, m in [(0, 0), (7, 59), (8, 0), (11, 30), (23, 59)]] == [
        4,
        3,
        2,
        1,
        4,
    ]


def test_unquoted_base_60_time_is_read_as_written() -> None:
    # YAML 1.1 reads unquoted 10:30 as the integer 630; the table must still say 10:30
    text = (DATA / "bad_tou.yaml").read_text()
    text = text.replace('{start: "07:30", slot: 2}', "{start: 10:30, slot: 2}")
    text = text.replace("{2: 10000, 4: 3000}", "{1: 12000, 2: 10000, 4: 3000}")
    tou = parse_config(text).tariff("tou")
    assert isinstance(tou, TouTariff)
    assert [s.start for s in tou.slots] == [time(0), time(8), time(10, 30), time(18)]


def test_merge_keys_give_defaults_and_own_keys_win() -> None:
    text = GOOD.replace(
        "  - name: bus-a\n    port: /dev/ttyUSB0\n    protocol: dlt645\n",
        "  - &line\n    name: bus-a\n    port: /dev/ttyUSB0\n    protocol: dlt645\n    baud: 1200\n"
        "  - <<: *line\n    name: bus-c\n    port: /dev/ttyUSB2\n",
    )
    cfg = parse_config(text)
    assert (cfg.bus("bus-c").protocol, cfg.bus("bus-c").baud) == ("dlt645", 1200)


@pytest.mark.parametrize(
    ("old", "new", "line", "column", "fragment"),
    [
        ("    address: \"000000000001\"\n", "", 12, 5,
         "missing required key 'address' (meters on dlt645 bus 'bus-a' need it)"),
        ("    unit_id: 1\n", "    unit_id: 1\n    address: \"000000000009\"\n",
         19, 5, "address is for dlt645 meters, and bus 'bus-b' speaks modbus"),
        ("    profile: generic\n", "", 16, 5, "missing required key 'profile'"),
        ("    type: prepaid\n", "    type: unbilled\n    trip_on_arrears: true\n",
         24, 22, "an unbilled account has no arrears"),
        ("    tariff: flat\n", "", 22, 5, "account 'acc1' is missing required key 'tariff'"),
        ("    account: acc1\n  - id: m2", "    role: gate\n  - id: m2",
         12, 5, "missing required key 'area' (a gate meter"),
        ("gateway_id: gw-test", "gateway_id: gw/test", 3, 13, "gateway_id: must be letters"),
        ("gateway_id: gw-test", "gateway_id: gw-test\ntimezone: Mars/Olympus",
         4, 11, "unknown time zone 'Mars/Olympus'"),
        ("    port: /dev/ttyUSB1", "    port: /dev/ttyUSB0", 9, 11,
         "/dev/ttyUSB0 is already used by another bus (line 6)"),
        ("    price: 5000\n", "    price: 5000\n  - id: flat\n    version: 2\n"
         "    effective: 2023-01-01T00:00:00+08:00\n    kind: flat\n    price: 6000\n",
         33, 16, "version 2 of tariff 'flat' must take effect after version 1 (line 27)"),
        ("    price: 5000\n", "    price: 5000\n  - id: flat\n    version: 1\n"
         "    effective: 2025-01-01T00:00:00+08:00\n    kind: flat\n    price: 6000\n",
         32, 14, "tariff 'flat' version 1 is already defined (line 27)"),
        ("    kind: flat\n    price: 5000\n", "    kind: tiered\n    thresholds: [100, 50]\n"
         "    prices: [1, 2, 3]\n", 30, 23,
         "thresholds: must increase: 50 follows 100"),
        ("    price: 5000", "    price: 5000\n    prise: 5000", 31, 5,
         "unknown key 'prise' in tariff 'flat'; did you mean 'price'?"),
        ("serial_buses:\n", "serial_buses: bus-a\nold_buses:\n", 4, 15,
         "serial_buses must be a list, not a string 'bus-a'"),
        ("    price: 5000", "    price: -1", 30, 12, "price: must be between 0 and 1000000"),
        ("    kind: flat\n    price: 5000\n", "    kind: tiered\n    thresholds: {a: 1}\n"
         "    prices: [1, 2]\n", 30, 17, "must be a list of integers (Wh), not a mapping"),
        ("    account: acc1\n  - id: m2",
         "    account: acc1\n    role: gate\n    area: T1\n  - id: m2", 15, 14,
         "a gate meter is not billed"),
        ("    address: \"000000000001\"\n", "    address: \"000000000001\"\n    profile: sdm120\n",
         15, 5, "profile is for modbus meters, and bus 'bus-a' speaks dlt645"),
        ("uplink:\n  host: localhost\n", "", 3, 1, "missing required key 'uplink'"),
    ],
)  # fmt: skip
def test_a_mistake_is_located_first(
    old: str, new: str, line: int, column: int, fragment: str
) -> None:
    assert old in GOOD
    error = errors_of(GOOD.replace(old, new, 1))[0]
    assert (error.line, error.column) == (line, column), error
    assert fragment in error.message


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("", 1, 1, "the file is empty"),
        ("- a\n", 1, 1, "the configuration must be a mapping"),
        ("gateway_id: x\n\tfoo: 1\n", 2, 1, "YAML syntax error: found character '\\t'"),
        ("gateway_id: x\x01\n", 1, 14, "unacceptable character #x0001"),
        ("a: " + "[" * 3000 + "]" * 3000, 1, 1, "nested too deeply"),
        ("a: 1\n---\nb: 2\n", 2, 1, "expected a single document"),
    ],
)
def test_hostile_yaml_is_a_located_error(text: str, line: int, column: int, fragment: str) -> None:
    error = errors_of(text)[0]
    assert (error.file, error.line, error.column) == ("t.yaml", line, column)
    assert fragment in error.message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_config(tmp_path / "missing.yaml")
    assert caught.value.file == str(tmp_path / "missing.yaml")
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("gateway_id: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(latin)


_TOKENS = "0.5|\"0.5\"|-1|0|null|~|[|{a: 1}|[]|yes|'x'|999999999999|2024-13-01|*nope|&a x|10:30"
_TOKENS += '|!!int z|!!float x|""|1e400|.nan|<<: 1|? [a]: b'


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    lines = EXAMPLE.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "value", "insert"]))
        if action == "delete":
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "value" and ": " in lines[i]:
            key = lines[i].split(": ", 1)[0]
            lines[i] = f"{key}: {draw(st.sampled_from(_TOKENS.split('|')))}\n"
        else:
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.text(max_size=6)) + lines[i][at:]
    return "".join(lines)


@settings(max_examples=120, deadline=None)
@given(mutated_example())
def test_any_mutation_of_the_example_loads_or_is_a_located_error(text: str) -> None:
    try:
        parse_config(text, "mutant.yaml")
    except ConfigError as exc:
        assert exc.errors
        for error in exc.errors:
            assert error.file == "mutant.yaml"
            assert error.line is not None and 1 <= error.line <= text.count("\n") + 2
            assert error.column is not None and error.column >= 1
            assert error.message


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab:- \n[]{}&*!<>'\"#|,0.9?%@`\t~")), max_size=60))
def test_any_text_loads_or_is_a_located_error(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "noise.yaml")  # never a whole gateway: no uplink, say
    assert all(e.line is not None and e.line >= 1 for e in caught.value.errors)


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GATEWAY, *args], capture_output=True, text=True, timeout=60)


def test_cli_check_good_file() -> None:
    path = str(DATA / "good_minimal.yaml")
    result = gateway_cli("config", "check", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: OK — 2 buses, 2 meters, 1 account, 1 tariff\n"
    example = gateway_cli("config", "check", str(example_config_path()))
    assert example.returncode == 0, example.stderr
    assert example.stdout.endswith("OK — 2 buses, 8 meters, 5 accounts, 4 tariffs\n")


def test_cli_check_bad_file_prints_every_error_and_exits_2() -> None:
    path = str(DATA / "bad_several.yaml")
    result = gateway_cli("config", "check", path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert [re.match(r"(.+):(\d+):(\d+): ", ln).groups() for ln in lines] == [  # type: ignore[union-attr]
        (path, "7", "11"),
        (path, "11", "14"),
        (path, "14", "3"),
    ]


def test_cli_example_prints_the_packaged_example() -> None:
    result = gateway_cli("config", "example")
    assert result.returncode == 0
    assert result.stdout == EXAMPLE
    assert parse_config(result.stdout).gateway_id == "bjgc-dr1"


def test_polling_section_defaults_and_values() -> None:
    from gateway.config import Polling
    from gateway.poller import PollSettings

    example = load_config(example_config_path())
    assert example.polling == Polling(interval_s=15, fail_after=3, backoff_s=30)
    minimal = load_config(DATA / "good_minimal.yaml")
    assert minimal.polling == Polling()
    settings = PollSettings.from_config(Polling(interval_s=0, fail_after=5, backoff_s=60))
    assert (settings.interval, settings.fail_after, settings.backoff_base) == (0, 5, 60)


def test_polling_section_errors_are_located(tmp_path: Path) -> None:
    text = (DATA / "good_minimal.yaml").read_text() + "polling:\n  interval_s: -1\n  fail_aftr: 2\n"
    bad = tmp_path / "bad_polling.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    lines = text.splitlines()
    row = len(lines) - 1  # 1-based line of "interval_s: -1"
    messages = [str(e) for e in caught.value.errors]
    assert any(m.startswith(f"{bad}:{row}:15:") for m in messages), messages
    assert any(f"{bad}:{row + 1}:3:" in m and "fail_after" in m for m in messages), messages


def test_a_meter_s_own_poll_interval() -> None:
    text = GOOD.replace(
        '    address: "000000000001"\n', '    address: "000000000001"\n    poll_interval_s: 300\n'
    )
    text = text.replace(
        "    profile: generic\n", "    profile: generic\n    poll_interval_s: 0.5\n"
    )
    cfg = parse_config(text)
    assert (cfg.meter("m1").poll_interval_s, cfg.meter("m2").poll_interval_s) == (300, 0.5)
    assert parse_config(GOOD).meter("m1").poll_interval_s is None  # polling.interval_s
    for value, fragment in [
        ("-1", "must be between 0 and 86400, not -1"),
        ("90000", "must be between 0 and 86400"),
        ("often", "must be a number"),
    ]:
        bad = GOOD.replace(
            '    address: "000000000001"\n',
            f'    address: "000000000001"\n    poll_interval_s: {value}\n',
        )
        (error,) = errors_of(bad)
        assert (error.line, error.column) == (_at(bad, "poll_interval_s"), 22), error
        assert error.message.startswith("poll_interval_s: ") and fragment in error.message, error


def test_a_float_tag_on_text_is_a_located_error() -> None:
    # found by the mutation property: `!!float x` made the YAML constructor raise ValueError
    text = EXAMPLE.replace("interval_s: 15", "interval_s: !!float x")
    (error,) = errors_of(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "!!float x" in t)
    assert (error.line, error.column) == (line, 15)
    assert "must be a number" in error.message


# --- billing, account levels, relays, commands ---------------------------------------


def _at(text: str, fragment: str) -> int:
    """1-based line of the first line holding ``fragment``."""
    return next(i for i, t in enumerate(text.splitlines(), 1) if fragment in t)


def test_control_sections_default_when_absent() -> None:
    from gateway.config import Billing, Commands, Relays, ThresholdsConfig

    cfg = load_config(DATA / "good_minimal.yaml")
    assert cfg.billing == Billing()
    assert cfg.billing.year_start == (1, 1) and cfg.billing.settlement_day == 1
    assert cfg.billing.vacancy_tariff is None and cfg.billing.hoarding_limit is None
    assert cfg.billing.thresholds == ThresholdsConfig(200_000, 50_000, 0, 0, 100_000)
    assert cfg.relays == Relays() and cfg.relays.close_mode == "allow"
    assert (cfg.relays.storm_share_pct, cfg.relays.storm_window_s) == (30, 300)
    assert cfg.commands == Commands() and cfg.commands.public_key is None
    acc = cfg.account("acc1")
    assert (acc.opened, acc.protect, acc.thresholds) == (None, False, None)


def test_control_sections_are_read() -> None:
    from datetime import date

    from gateway.config import ThresholdsConfig
    from gateway.prepaid import Thresholds

    text = GOOD.replace(
        "    type: prepaid\n",
        "    type: prepaid\n    opened: 2026-03-15\n    protect: true\n"
        "    thresholds: {alarm1: 90000, close_allow: 10000}\n",
    ) + (
        'billing:\n  year_start: "04-01"\n  settlement_day: 28\n  vacancy_tariff: flat\n'
        "  hoarding_limit: 5000000\n  prorate_tiers: false\n"
        '  holidays: [2026-10-02, "2026-10-01"]\n'
        "  thresholds: {alarm1: 100000, alarm2: 20000, overdraft_limit: 5000}\n"
        'relays:\n  close_mode: direct\n  quiet_hours: {from: "22:00", to: "07:00"}\n'
        "  storm: {share_pct: 50, min_accounts: 2}\n  confirm_delay_s: 0.5\n"
    )
    cfg = parse_config(text)
    b = cfg.billing
    assert (b.year_start, b.settlement_day, b.vacancy_tariff) == ((4, 1), 28, "flat")
    assert (b.hoarding_limit, b.prorate_tiers) == (5_000_000, False)
    assert b.holidays == (date(2026, 10, 1), date(2026, 10, 2))  # sorted
    # unwritten levels are the built-in defaults (close_allow 0, emergency credit 10 yuan)
    assert b.thresholds == ThresholdsConfig(100_000, 20_000, 5_000, 0, 100_000)
    acc = cfg.account("acc1")
    assert (acc.opened, acc.protect) == (date(2026, 3, 15), True)
    # the account's unwritten levels come from billing.thresholds
    assert acc.thresholds == ThresholdsConfig(90_000, 20_000, 5_000, 10_000, 100_000)
    assert Thresholds.from_config(acc.thresholds) == Thresholds(90_000, 20_000, 5_000, 10_000,
                                                                  100_000)  # fmt: skip
    r = cfg.relays
    assert (r.close_mode, r.quiet_hours) == ("direct", (time(22, 0), time(7, 0)))
    assert (r.storm_share_pct, r.storm_window_s, r.storm_min_accounts) == (50, 300, 2)
    assert (r.confirm_delay_s, r.confirm_attempts, r.trip_valid_s) == (0.5, 3, 300)


@pytest.mark.parametrize(
    ("extra", "bad_line", "column", "fragment"),
    [
        ('billing:\n  year_start: "02-29"\n', "year_start", 15, "a day of every year"),
        ("billing:\n  year_start: 1\n", "year_start", 15, 'must be a day "MM-DD"'),
        ("billing:\n  settlement_day: 29\n", "settlement_day", 19, "between 1 and 28"),
        ("billing:\n  vacancy_tariff: flta\n", "vacancy_tariff", 19,
         "unknown tariff 'flta'; did you mean 'flat'?"),
        ("billing:\n  hoarding_limit: 10.5\n", "hoarding_limit", 19, "must be an integer"),
        ("billing:\n  holidays: [2026-10-01, 2026-13-01]\n", "holidays", 26, "date YYYY-MM-DD"),
        ("billing:\n  thresholds: {alarm1: 1000, alarm2: 2000}\n", "thresholds", 38,
         "alarm2 (2000) must not be above alarm1 (1000)"),
        ("billing:\n  thresholds: {overdraft_limit: -1}\n", "thresholds", 33, "between 0 and"),
        ("billing:\n  thresholds: {alarm3: 1}\n", "thresholds", 16,
         "unknown key 'alarm3' in thresholds"),
        ("relays:\n  close_mode: push\n", "close_mode", 15, "must be one of allow, direct"),
        ('relays:\n  quiet_hours: {from: "22:00", to: "22:00"}\n', "quiet_hours", 36,
         "must not start and end at the same time"),
        ("relays:\n  storm: {share_pct: 0}\n", "storm", 22, "between 1 and 100"),
        ("commands:\n  public_key: AAAA\n", "public_key", 15, "32 bytes, this is 3"),
        ("commands:\n  public_key: nowhere.pem\n", "public_key", 15, "nor a readable PEM"),
    ],
)  # fmt: skip
def test_control_mistakes_are_located(
    extra: str, bad_line: str, column: int, fragment: str
) -> None:
    text = GOOD + extra
    (error,) = errors_of(text)
    assert (error.line, error.column) == (_at(text, bad_line), column), error
    assert fragment in error.message


def test_an_account_level_mistake_is_located() -> None:
    text = GOOD.replace("    type: prepaid\n", "    type: prepaid\n    thresholds: {alarm2: 1}\n")
    text += "billing:\n  thresholds: {alarm1: 0, alarm2: 0}\n"
    (error,) = errors_of(text)
    # the account's alarm2 (1) is above the default alarm1 it inherits (0)
    assert (error.line, error.column) == (_at(text, "alarm2: 1}"), 26)
    assert "alarm2 (1) must not be above alarm1 (0)" in error.message
    text = GOOD.replace("    type: prepaid\n", "    type: prepaid\n    opened: 2026-02-30\n")
    (error,) = errors_of(text)
    assert (error.line, error.column) == (_at(text, "opened:"), 13)


def test_tripping_on_arrears_needs_a_relay() -> None:
    # m2's profile sdm120 has no relay, and acc1 (prepaid) trips on arrears by default
    text = GOOD.replace("    profile: generic\n", "    profile: sdm120\n")
    (error,) = errors_of(text)
    line = _at(text, "profile: sdm120") + 1  # m2's `account: acc1`
    assert (error.line, error.column) == (line, 14)
    assert "meter 'm2' has no relay" in error.message and "trips on arrears" in error.message
    # no trip on arrears: fine; a meter with a relay (generic: coil 0): fine
    off = text.replace("    type: prepaid\n", "    type: prepaid\n    trip_on_arrears: false\n")
    assert parse_config(off).account("acc1").trip_on_arrears is False
    assert parse_config(GOOD).meter("m2").profile == "generic"
    # a DL/T 645 meter is taken to have a relay: m1 alone on the account is fine
    assert parse_config(text.replace("    account: acc1\naccounts", "accounts")).meters


def test_the_public_key_as_base64_or_pem(tmp_path: Path) -> None:
    import base64

    raw = bytes(range(32))
    text = GOOD + f"commands:\n  public_key: {base64.b64encode(raw).decode()}\n"
    assert parse_config(text).commands.public_key == raw
    # a PEM SubjectPublicKeyInfo of an Ed25519 key (RFC 8410), relative to the config file
    der = bytes.fromhex("302a300506032b6570032100") + raw
    body = base64.b64encode(der).decode()
    (tmp_path / "keys").mkdir()
    pem = f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"
    (tmp_path / "keys" / "master.pem").write_text(pem)
    cfg_path = tmp_path / "gw.yaml"
    cfg_path.write_text(GOOD + "commands:\n  public_key: keys/master.pem\n")
    assert load_config(cfg_path).commands.public_key == raw
    # an RSA-looking (wrong) key is a located error
    (tmp_path / "keys" / "rsa.pem").write_text(
        pem.replace(body, base64.b64encode(b"x" * 44).decode())
    )
    cfg_path.write_text(GOOD + "commands:\n  public_key: keys/rsa.pem\n")
    with pytest.raises(ConfigError, match="not an Ed25519 public key") as caught:
        load_config(cfg_path)
    assert caught.value.line == _at(cfg_path.read_text(), "public_key")


def test_the_example_shows_the_control_sections() -> None:
    cfg = load_config(example_config_path())
    assert cfg.billing.vacancy_tariff == "commercial-flat"
    assert cfg.billing.hoarding_limit == 50_000_000
    assert cfg.relays.quiet_hours == (time(22, 0), time(7, 0))
    assert cfg.account("C201").thresholds is not None
    # the example's Modbus tenants have no relays: they do not trip on arrears
    assert not cfg.account("C201").trip_on_arrears and not cfg.account("D301").trip_on_arrears
