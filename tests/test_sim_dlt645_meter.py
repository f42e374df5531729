"""The simulated DL/T 645 meter, sans-IO: request frames in, reply frames out."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pytest

from gateway.clock import ManualClock
from gateway.protocols.dlt645 import (
    BroadcastTime,
    ChangeBaudRequest,
    ErrorBits,
    FreezeReply,
    FreezeRequest,
    NegativeReply,
    ReadFollowUp,
    ReadReply,
    ReadRequest,
    RelayAction,
    RelayControl,
    RelayReply,
    SecureRelayControl,
    StatusWord3,
    WriteReply,
    WriteRequest,
    decode_frame,
    decode_value,
    encode,
    encode_value,
)
from gateway.protocols.errors import RemoteProtocolError
from gateway.sim.dlt645_meter import Dlt645Meter
from gateway.sim.physics import ConstantLoad, MeterPhysics

ADDR = "123456789012"
SLOTS = [(time(0), 4), (time(8), 2), (time(12), 3), (time(18), 1)]


def make(
    clock: ManualClock, watts: int = 1000, *, phases: int = 1, has_relay: bool = True, **kw: object
) -> Dlt645Meter:
    physics = MeterPhysics(
        meter_number="000000004711",
        load=ConstantLoad(watts),
        now=clock.now(),
        energy_import_wh=12_345_670,
        voltage_dv=2201,
        phases=phases,
        tou_slots=SLOTS,
        has_relay=has_relay,
    )
    return Dlt645Meter("m1", ADDR, physics, **kw)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2024, 6, 1, 12, 0))  # local noon


def ask(meter: Dlt645Meter, clock: ManualClock, event: object) -> object:
    reply = meter.handle(encode(event), clock.now())  # type: ignore[arg-type]
    return None if reply is None else decode_frame(reply)


def read(meter: Dlt645Meter, clock: ManualClock, di: int) -> object:
    reply = ask(meter, clock, ReadRequest(ADDR, di))
    if isinstance(reply, ReadReply):
        assert reply.di == di
        return decode_value(di, reply.data)
    return reply


def relay(
    meter: Dlt645Meter,
    clock: ManualClock,
    action: RelayAction,
    *,
    password: str = "000000",
    valid: timedelta = timedelta(minutes=5),
) -> object:
    until = (clock.local() + valid).replace(tzinfo=None, microsecond=0)
    return ask(meter, clock, RelayControl(ADDR, action, until, 2, password))


# --- golden frames (domain.md worked examples) ----------------------------------


def test_worked_examples_byte_exact(clock: ManualClock) -> None:
    meter = make(clock)  # holds 12345.67 kWh import, 0 export, 220.1 V
    req = bytes.fromhex("68 12 90 78 56 34 12 68 11 04 33 33 33 33 67 16")  # read 00000000
    assert meter.handle(req, clock.now()) == bytes.fromhex(
        "68 129078563412 68"  # start, address 123456789012 low first, start
        " 91 08"  # read reply, 8 data bytes
        " 33 33 33 33"  # DI 00000000 (+33)
        " 9A 78 56 34"  # 67 45 23 01 -> 12345.67 kWh
        " 87 16"  # CS, end
    )
    req = bytes.fromhex("68 12 90 78 56 34 12 68 11 04 33 34 34 35 6B 16")  # read 02010100
    assert meter.handle(req, clock.now()) == bytes.fromhex(
        "68 129078563412 68 91 06"
        " 33 34 34 35"  # DI 02010100
        " 34 55"  # 01 22 -> 220.1 V
        " 76 16"
    )
    req = bytes.fromhex("68 AA AA AA AA AA AA 68 13 00 DF 16")  # read address, wildcard
    assert meter.handle(req, clock.now()) == bytes.fromhex(
        "68 129078563412 68 93 06"
        " 45 C3 AB 89 67 45"  # the address 12 90 78 56 34 12 (+33)
        " 07 16"
    )


def test_unknown_di_gets_no_such_data(clock: ManualClock) -> None:
    meter = make(clock)
    reply = meter.handle(encode(ReadRequest(ADDR, 0x02800007)), clock.now())  # temperature
    assert reply == bytes.fromhex(
        "68 129078563412 68"
        " D1 01"  # error reply to a read, 1 data byte
        " 35"  # 02 (+33): bit1 no such data
        " 8D 16"
    )


def test_preamble_on_replies(clock: ManualClock) -> None:
    meter = make(clock, preamble=4)
    reply = meter.handle(encode(ReadRequest(ADDR, 0)), clock.now())
    assert reply is not None and reply.startswith(b"\xfe" * 4) and reply[4] == 0x68


# --- every DI --------------------------------------------------------------------


def test_energy_registers_and_tariffs(clock: ManualClock) -> None:
    meter = make(clock, watts=1000)
    clock.advance(timedelta(hours=24))  # 12-18 t3, 18-24 t1, 00-08 t4, 08-12 t2
    assert read(meter, clock, 0x00010000) == Decimal("12369.67")
    block = read(meter, clock, 0x0001FF00)
    assert block == {
        "total": Decimal("12369.67"),
        "t1": Decimal("12351.67"),  # the start value sits in tariff 1, + 6 kWh
        "t2": Decimal("4.00"),
        "t3": Decimal("6.00"),
        "t4": Decimal("8.00"),
    }
    for tariff, key in enumerate(("t1", "t2", "t3", "t4"), start=1):
        assert read(meter, clock, 0x00010000 | tariff << 8) == block[key]  # type: ignore[index]
    assert read(meter, clock, 0x00000000) == Decimal("12369.67")
    assert read(meter, clock, 0x0000FF00) == {"total": Decimal("12369.67")}
    assert read(meter, clock, 0x00020000) == Decimal("0.00")
    assert read(meter, clock, 0x0002FF00) == {"total": Decimal("0.00")}


def test_registers_show_whole_hundredths_of_kwh(clock: ManualClock) -> None:
    meter = make(clock, watts=3600)
    clock.advance(timedelta(seconds=19))  # +19 Wh: shown as +0.01 kWh
    assert read(meter, clock, 0x00010000) == Decimal("12345.68")


def test_solar_export_reverse_and_combined(clock: ManualClock) -> None:
    meter = make(clock, watts=-1500)
    clock.advance(timedelta(hours=2))
    assert read(meter, clock, 0x00020000) == Decimal("3.00")
    assert read(meter, clock, 0x00000000) == Decimal("12348.67")  # forward + reverse
    assert read(meter, clock, 0x02030000) == Decimal("-1.5000")
    assert read(meter, clock, 0x02020100) == Decimal("-6.954")  # -1500 / (220.1 x 0.98)
    assert read(meter, clock, 0x04000501) & 0x10  # status word 1: active power reverse


def test_instantaneous_values_single_phase(clock: ManualClock) -> None:
    meter = make(clock, watts=2157)
    assert read(meter, clock, 0x02010100) == Decimal("220.1")
    assert read(meter, clock, 0x0201FF00) == {"a": Decimal("220.1")}
    assert read(meter, clock, 0x02020100) == Decimal("10.000")  # 2157 / (220.1 x 0.98)
    assert read(meter, clock, 0x0202FF00) == {"a": Decimal("10.000")}
    assert read(meter, clock, 0x02030000) == Decimal("2.1570")
    assert read(meter, clock, 0x0203FF00) == {"total": Decimal("2.1570"), "a": Decimal("2.1570")}
    assert read(meter, clock, 0x02060000) == Decimal("0.980")
    assert read(meter, clock, 0x0206FF00) == {"total": Decimal("0.980"), "a": Decimal("0.980")}
    assert read(meter, clock, 0x02800002) == Decimal("50.00")
    no_b = read(meter, clock, 0x02010200)
    assert no_b == NegativeReply(ADDR, 0x11, ErrorBits.NO_DATA)


def test_instantaneous_values_three_phase(clock: ManualClock) -> None:
    meter = make(clock, watts=6471, phases=3)
    assert read(meter, clock, 0x0201FF00) == dict.fromkeys("abc", Decimal("220.1"))
    assert read(meter, clock, 0x02020300) == Decimal("10.000")
    assert read(meter, clock, 0x0203FF00) == {
        "total": Decimal("6.4710"),
        **dict.fromkeys("abc", Decimal("2.1570")),
    }


def test_power_saturates_at_the_format_limit(clock: ManualClock) -> None:
    meter = make(clock, watts=100_000, phases=3)
    assert read(meter, clock, 0x02030000) == Decimal("79.9999")


def test_date_time_from_the_meters_own_clock(clock: ManualClock) -> None:
    meter = make(clock)
    meter.control("drift", {"offset_s": 3600.7, "now": clock.now()})
    assert read(meter, clock, 0x04000101) == date(2024, 6, 1)
    assert read(meter, clock, 0x04000102) == time(13, 0, 0)  # fraction dropped
    clock.advance(timedelta(hours=11))  # 23:00 real, meter 00:00:00.7 next day
    assert read(meter, clock, 0x04000101) == date(2024, 6, 2)
    raw = ask(meter, clock, ReadRequest(ADDR, 0x04000101))
    assert isinstance(raw, ReadReply) and raw.data == bytes([0x00, 0x02, 0x06, 0x24])  # WW DD MM YY


def test_identity_and_money(clock: ManualClock) -> None:
    meter = make(clock, asset_code="SHOP-12")
    assert read(meter, clock, 0x04000402) == "000000004711"
    assert read(meter, clock, 0x04000401) == ADDR
    assert read(meter, clock, 0x04000403) == "SHOP-12"
    assert read(meter, clock, 0x00900200) == Decimal("0.00")
    assert read(meter, clock, 0x00900201) == Decimal("0.00")
    assert read(meter, clock, 0x04000B01) == {"hour": 0, "day": 1}


def test_daily_freeze_history_and_missing_freeze(clock: ManualClock) -> None:
    meter = make(clock, watts=1000)
    assert read(meter, clock, 0x05060001) == NegativeReply(ADDR, 0x11, ErrorBits.NO_DATA)
    clock.set(datetime(2024, 6, 3, 0, 5))  # two midnights later
    assert read(meter, clock, 0x05060001) == datetime(2024, 6, 3, 0, 0)
    assert read(meter, clock, 0x05060002) == datetime(2024, 6, 2, 0, 0)
    assert read(meter, clock, 0x05060101) == {
        "total": Decimal("12381.67"),  # +36 h at 1 kW
        "t1": Decimal("12357.67"),
        "t2": Decimal("4.00"),
        "t3": Decimal("12.00"),
        "t4": Decimal("8.00"),
    }
    assert read(meter, clock, 0x05060102) == {
        "total": Decimal("12357.67"),
        "t1": Decimal("12351.67"),
        "t2": Decimal("0.00"),
        "t3": Decimal("6.00"),
        "t4": Decimal("0.00"),
    }
    assert read(meter, clock, 0x05060201) == {"total": Decimal("0.00")}
    assert read(meter, clock, 0x05060003) == NegativeReply(ADDR, 0x11, ErrorBits.NO_DATA)
    assert read(meter, clock, 0x0506013F) == NegativeReply(ADDR, 0x11, ErrorBits.NO_DATA)


def test_62nd_freeze_is_readable(clock: ManualClock) -> None:
    meter = make(clock)
    clock.advance(timedelta(days=70))
    assert read(meter, clock, 0x0506003E) == datetime(2024, 8, 10, 0, 0) - timedelta(days=61)


def test_settlement_freeze(clock: ManualClock) -> None:
    meter = make(clock, watts=1000)
    assert read(meter, clock, 0x0001FF01) == NegativeReply(ADDR, 0x11, ErrorBits.NO_DATA)
    clock.set(datetime(2024, 7, 1, 1, 0))  # frozen at 00:00: 29.5 days x 24 kWh later
    block = read(meter, clock, 0x0001FF01)
    assert isinstance(block, dict) and block["total"] == Decimal("13053.67")
    assert read(meter, clock, 0x00010001) == Decimal("13053.67")
    assert read(meter, clock, 0x00010301) == block["t3"] == Decimal("180.00")  # 30 x 12-18
    assert read(meter, clock, 0x00020001) == Decimal("0.00")
    assert read(meter, clock, 0x00010002) == NegativeReply(ADDR, 0x11, ErrorBits.NO_DATA)


def test_load_curve_and_follow_up_reads_are_not_kept(clock: ManualClock) -> None:
    meter = make(clock)
    assert ask(meter, clock, ReadRequest(ADDR, 0x06000001, blocks=1)) == NegativeReply(
        ADDR, 0x11, ErrorBits.NO_DATA
    )
    assert ask(meter, clock, ReadFollowUp(ADDR, 0, 1)) == NegativeReply(
        ADDR, 0x12, ErrorBits.NO_DATA
    )


# --- addressing --------------------------------------------------------------------


def test_only_its_own_address_answers(clock: ManualClock) -> None:
    meter = make(clock)
    assert meter.handle(encode(ReadRequest("123456789013", 0)), clock.now()) is None
    assert meter.handle(encode(ReadRequest("999999999999", 0)), clock.now()) is None  # broadcast
    assert isinstance(ask(meter, clock, ReadRequest("AAAAAA789012", 0)), ReadReply)  # AA high bytes
    assert ask(meter, clock, ReadRequest("AAAAAA789013", 0)) is None
    # a wildcard never reaches a control command
    until = datetime(2024, 6, 1, 12, 5)
    assert ask(meter, clock, RelayControl("AAAAAAAAAAAA", RelayAction.TRIP, until)) is None
    assert meter.physics.relay_closed


def test_garbage_and_replies_are_ignored(clock: ManualClock) -> None:
    meter = make(clock)
    good = encode(ReadRequest(ADDR, 0))
    assert meter.handle(good[:-2] + b"\x00\x16", clock.now()) is None  # bad CS
    assert meter.handle(b"\x01\x02\x03", clock.now()) is None
    assert meter.handle(encode(ReadReply(ADDR, 0, b"\x00" * 4)), clock.now()) is None
    assert meter.handle(b"\xfe\xfe" + good, clock.now()) is not None  # wake-up bytes


def test_wrong_address_and_bad_checksum_faults(clock: ManualClock) -> None:
    meter = make(clock, preamble=2)
    reply = meter.handle(encode(ReadRequest(ADDR, 0)), clock.now())
    assert reply is not None
    wrong = decode_frame(meter.with_wrong_address(reply))
    assert (
        isinstance(wrong, ReadReply)
        and wrong.address != ADDR
        and wrong.data == decode_frame(reply).data
    )  # type: ignore[union-attr]
    assert meter.with_wrong_address(reply)[:2] == b"\xfe\xfe"
    with pytest.raises(RemoteProtocolError):
        decode_frame(meter.with_bad_checksum(reply))
    assert meter.address_label() == ADDR


def test_change_baud_is_refused(clock: ManualClock) -> None:
    meter = make(clock)
    assert ask(meter, clock, ChangeBaudRequest(ADDR, 9600)) == NegativeReply(
        ADDR, 0x17, ErrorBits.BAUD_UNCHANGEABLE
    )


# --- time ---------------------------------------------------------------------------


def test_write_date_and_time_with_password(clock: ManualClock) -> None:
    meter = make(clock)
    data = encode_value(0x04000102, time(12, 30, 0))
    assert ask(meter, clock, WriteRequest(ADDR, 0x04000102, data, 2, "000000")) == WriteReply(ADDR)
    assert meter.physics.meter_time(clock.now()).time() == time(12, 30)
    data = encode_value(0x04000101, date(2024, 6, 5))
    assert ask(meter, clock, WriteRequest(ADDR, 0x04000101, data)) == WriteReply(ADDR)
    assert meter.physics.meter_time(clock.now()).replace(tzinfo=None) == datetime(
        2024, 6, 5, 12, 30
    )
    wrong = WriteRequest(ADDR, 0x04000102, data[:3], 2, "123456")
    assert ask(meter, clock, wrong) == NegativeReply(ADDR, 0x14, ErrorBits.AUTHORITY)
    wrong_level = WriteRequest(ADDR, 0x04000102, data[:3], 4, "000000")
    assert ask(meter, clock, wrong_level) == NegativeReply(ADDR, 0x14, ErrorBits.AUTHORITY)
    reply = meter.handle(encode(wrong), clock.now())
    assert reply is not None and reply[8:11] == bytes.fromhex("D4 01 37")  # D4, ERR 04 (+33)
    other = WriteRequest(ADDR, 0x04000401, bytes(6))
    assert ask(meter, clock, other) == NegativeReply(ADDR, 0x14, ErrorBits.OTHER)


def test_broadcast_time_small_corrections_only(clock: ManualClock) -> None:
    meter = make(clock)
    meter.control("drift", {"offset_s": 200, "now": clock.now()})  # 200 s fast
    true_local = clock.local().replace(tzinfo=None)
    assert meter.handle(encode(BroadcastTime(true_local)), clock.now()) is None  # never answered
    assert meter.physics.meter_time(clock.now()).replace(tzinfo=None) == true_local
    meter.control("drift", {"offset_s": 200, "now": clock.now()})
    assert meter.handle(encode(BroadcastTime(true_local)), clock.now()) is None
    assert meter.counters["broadcast-time-refused-daily-limit"] == 1
    clock.advance(timedelta(days=1))  # the next day: allowed again, but not 6 min away
    meter.control("drift", {"offset_s": 360, "now": clock.now()})
    true_local = clock.local().replace(tzinfo=None)
    meter.handle(encode(BroadcastTime(true_local)), clock.now())
    assert meter.counters["broadcast-time-refused-offset"] == 1
    assert meter.physics.clock_offset_s == 360
    # addressed (not broadcast) time frames are ignored too
    meter.handle(encode(BroadcastTime(true_local, ADDR)), clock.now())
    assert meter.physics.clock_offset_s == 360


def test_broadcast_time_refused_around_midnight(clock: ManualClock) -> None:
    clock.set(datetime(2024, 6, 1, 23, 57))
    meter = make(clock)
    meter.control("drift", {"offset_s": 60, "now": clock.now()})
    meter.handle(encode(BroadcastTime(datetime(2024, 6, 1, 23, 57))), clock.now())
    assert meter.counters == {"broadcast-time-refused-midnight": 1}
    assert meter.physics.clock_offset_s == 60


# --- freeze --------------------------------------------------------------------------


def test_freeze_command(clock: ManualClock) -> None:
    meter = make(clock)
    assert ask(meter, clock, FreezeRequest(ADDR)) == FreezeReply(ADDR)
    assert meter.instant_freezes[0].import_wh == 12_345_670
    assert meter.handle(encode(FreezeRequest("999999999999")), clock.now()) is None
    assert len(meter.instant_freezes) == 2
    assert ask(meter, clock, FreezeRequest(ADDR, 0, 0)) == FreezeReply(ADDR)
    assert meter.freeze_schedule == {"minute": 0, "hour": 0, "day": None, "month": None}


# --- relay ------------------------------------------------------------------------------


def status3(meter: Dlt645Meter, clock: ManualClock) -> StatusWord3:
    value = read(meter, clock, 0x04000503)
    assert isinstance(value, StatusWord3)
    return value


def test_trip_stops_energy_and_shows_in_status_word_3(clock: ManualClock) -> None:
    meter = make(clock, watts=3600)
    assert status3(meter, clock) == 0
    reply = meter.handle(
        encode(RelayControl(ADDR, RelayAction.TRIP, datetime(2024, 6, 1, 12, 5))), clock.now()
    )
    assert reply == bytes.fromhex("68 129078563412 68 9C 00 22 16")  # 9C ok, no data, CS, end
    assert status3(meter, clock) == StatusWord3.RELAY_OPEN | StatusWord3.RELAY_COMMAND_OPEN
    raw = ask(meter, clock, ReadRequest(ADDR, 0x04000503))
    assert isinstance(raw, ReadReply) and raw.data == bytes([0x50, 0x00])  # bits 4 and 6, low first
    clock.advance(timedelta(hours=1))
    assert read(meter, clock, 0x00010000) == Decimal("12345.67")
    assert read(meter, clock, 0x02030000) == Decimal("0.0000")


def test_direct_close(clock: ManualClock) -> None:
    meter = make(clock, watts=3600)
    relay(meter, clock, RelayAction.TRIP)
    assert relay(meter, clock, RelayAction.CLOSE) == RelayReply(ADDR)
    assert meter.physics.relay_closed and status3(meter, clock) == 0
    clock.advance(timedelta(seconds=10))
    assert read(meter, clock, 0x00010000) == Decimal("12345.68")


def test_close_allow_waits_for_the_button(clock: ManualClock) -> None:
    meter = make(clock)
    assert meter.control("button", {}) == {"closed": False, "relay_closed": True}
    relay(meter, clock, RelayAction.TRIP)
    assert meter.control("button", {"now": clock.now()})["closed"] is False  # not allowed yet
    assert relay(meter, clock, RelayAction.CLOSE_ALLOW) == RelayReply(ADDR)
    assert not meter.physics.relay_closed
    assert status3(meter, clock) == StatusWord3.RELAY_OPEN  # command state: closed (allowed)
    assert meter.truth(clock.now())["close_allowed"] is True
    assert meter.control("button", {"now": clock.now().isoformat()}) == {
        "closed": True,
        "relay_closed": True,
    }
    assert status3(meter, clock) == 0


def test_close_allow_auto_mode_closes_at_once(clock: ManualClock) -> None:
    meter = make(clock, close_mode="auto")
    relay(meter, clock, RelayAction.TRIP)
    relay(meter, clock, RelayAction.CLOSE_ALLOW)
    assert meter.physics.relay_closed


def test_protect_mode_refuses_trip(clock: ManualClock) -> None:
    meter = make(clock)
    assert relay(meter, clock, RelayAction.PROTECT) == RelayReply(ADDR)
    assert status3(meter, clock) == StatusWord3.PROTECT_MODE
    reply = meter.handle(
        encode(RelayControl(ADDR, RelayAction.TRIP, datetime(2024, 6, 1, 12, 5))), clock.now()
    )
    assert reply == bytes.fromhex("68 129078563412 68 DC 01 34 97 16")  # DC, ERR 01 other
    assert meter.physics.relay_closed
    assert meter.last_control == {"action": "trip", "result": "protect"}
    relay(meter, clock, RelayAction.PROTECT_RELEASE)
    assert relay(meter, clock, RelayAction.TRIP) == RelayReply(ADDR)
    assert not meter.physics.relay_closed
    meter.control("set_protect", {"on": True})
    assert meter.protect


def test_deadline_and_password(clock: ManualClock) -> None:
    meter = make(clock)
    expired = relay(meter, clock, RelayAction.TRIP, valid=-timedelta(seconds=1))
    assert expired == NegativeReply(ADDR, 0x1C, ErrorBits.OTHER)
    assert meter.physics.relay_closed
    # the deadline is read on the meter's clock: a meter 10 min slow still takes it
    meter.control("drift", {"offset_s": -600, "now": clock.now()})
    assert relay(meter, clock, RelayAction.TRIP, valid=-timedelta(minutes=5)) == RelayReply(ADDR)
    bad = relay(meter, clock, RelayAction.CLOSE, password="999999")
    assert bad == NegativeReply(ADDR, 0x1C, ErrorBits.AUTHORITY)
    assert not meter.physics.relay_closed
    secure = SecureRelayControl(ADDR, bytes(16))
    assert ask(meter, clock, secure) == NegativeReply(ADDR, 0x1C, ErrorBits.AUTHORITY)
    assert meter.counters["control-refused-expired"] == 1


def test_alarm_bit(clock: ManualClock) -> None:
    meter = make(clock)
    relay(meter, clock, RelayAction.ALARM)
    assert status3(meter, clock) == StatusWord3.PRE_TRIP_ALARM
    relay(meter, clock, RelayAction.ALARM_RELEASE)
    assert status3(meter, clock) == 0


def test_meter_without_relay_refuses_trip(clock: ManualClock) -> None:
    meter = make(clock, has_relay=False)
    assert relay(meter, clock, RelayAction.TRIP) == NegativeReply(ADDR, 0x1C, ErrorBits.OTHER)
    assert relay(meter, clock, RelayAction.ALARM) == RelayReply(ADDR)


def test_broadcast_trip_is_ignored(clock: ManualClock) -> None:
    meter = make(clock)
    until = datetime(2024, 6, 1, 12, 5)
    assert (
        meter.handle(encode(RelayControl("999999999999", RelayAction.TRIP, until)), clock.now())
        is None
    )
    assert meter.physics.relay_closed


# --- control actions, truth ------------------------------------------------------------


def test_swap_changes_meter_number_and_energy(clock: ManualClock) -> None:
    meter = make(clock)
    result = meter.control(
        "swap", {"meter_number": "000000009999", "energy_import_wh": 1_000, "now": clock.now()}
    )
    assert result == {"meter_number": "000000009999", "energy_import_wh": 1000}
    assert read(meter, clock, 0x04000402) == "000000009999"
    assert read(meter, clock, 0x00010000) == Decimal("1.00")
    with pytest.raises(ValueError, match="12 digits"):
        meter.control("swap", {"meter_number": "12", "energy_import_wh": 0})


def test_drift_and_unknown_action(clock: ManualClock) -> None:
    meter = make(clock)
    meter.control("drift", {"ppm": 1000, "now": clock.now()})
    clock.advance(timedelta(seconds=1000))
    assert read(meter, clock, 0x04000102) == time(12, 16, 41)
    with pytest.raises(ValueError, match="no control action"):
        meter.control("explode", {})
    with pytest.raises(ValueError, match="timezone-aware"):
        meter.control("button", {"now": "2024-06-01T12:00:00"})


def test_truth_is_json(clock: ManualClock) -> None:
    meter = make(clock)
    relay(meter, clock, RelayAction.TRIP)
    truth = meter.truth(clock.now())
    assert json.loads(json.dumps(truth)) == truth
    assert truth["address"] == ADDR and truth["relay_closed"] is False
    assert truth["status_word_3"] == 0x50
    assert truth["counters"]["control-trip"] == 1
    assert truth["faults"]["silent"] is False


def test_constructor_checks(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="address"):
        make(clock).__class__("x", "99999999999", make(clock).physics)
    with pytest.raises(ValueError, match="close_mode"):
        make(clock, close_mode="magic")
    with pytest.raises(ValueError, match="password"):
        make(clock, password="abc")


# --- an independent peer: the PyPI dlt645 package parses what the meter says --------


def test_pypi_dlt645_client_reads_the_truth(clock: ManualClock) -> None:
    import struct

    from dlt645.protocol.protocol import DLT645Protocol
    from dlt645.service.clientsvc.client_service import MeterClientService

    meter = make(clock, watts=2157)
    client = MeterClientService(None)  # type: ignore[arg-type]  # no transport: frames only
    client.address = bytearray(bytes.fromhex(ADDR)[::-1])

    def value(di: int) -> object:
        request = DLT645Protocol.build_frame(client.address, 0x11, struct.pack("<I", di))
        assert request.startswith(b"\xfe" * 4)  # the client wakes the line; the meter skips it
        reply = meter.handle(bytes(request), clock.now())
        assert reply is not None
        item = client.handle_response(DLT645Protocol.deserialize(reply))
        assert item is not None
        return item.value

    truth = meter.truth(clock.now())
    assert value(0x00010000) == truth["energy_import_wh"] / 1000 == 12345.67
    assert value(0x02010100) == truth["voltage_dv"] / 10 == 220.1
    assert value(0x02020100) == truth["current_ma"] / 1000 == 10.0
    assert value(0x02030000) == truth["power_w"] / 1000 == 2.157
    assert value(0x02800002) == truth["frequency_chz"] / 100 == 50.0
    assert value(0x04000402) == truth["meter_number"]
