"""What a reading measures: quantity codes and their exact integer units.

Every measured value in the gateway is an integer in the unit its quantity declares
(money and energy are never floats).  The integer codes are part of the wire
format (CBOR batch schema v1): never renumber, only append.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = ["UNITS", "Quantity", "Reading"]


class Quantity(IntEnum):
    """Quantity code -> meaning.  The unit of each is in :data:`UNITS`."""

    ENERGY_IMPORT = 1
    """Forward (import) active energy, cumulative register."""
    ENERGY_EXPORT = 2
    """Reverse (export) active energy, cumulative register."""
    ENERGY_COMBINED = 3
    """Combined active energy (DL/T 645 00000000), signed."""
    ENERGY_T1 = 4
    """Forward active energy in tariff 1 (sharp, 尖)."""
    ENERGY_T2 = 5
    """Forward active energy in tariff 2 (peak, 峰)."""
    ENERGY_T3 = 6
    """Forward active energy in tariff 3 (flat, 平)."""
    ENERGY_T4 = 7
    """Forward active energy in tariff 4 (valley, 谷)."""
    POWER = 10
    """Total active power, signed."""
    VOLTAGE_A = 11
    VOLTAGE_B = 12
    VOLTAGE_C = 13
    CURRENT_A = 14
    CURRENT_B = 15
    CURRENT_C = 16
    FREQUENCY = 17
    POWER_FACTOR = 18
    """Total power factor, signed."""
    REACTIVE_POWER = 19
    APPARENT_POWER = 20


UNITS: dict[Quantity, str] = {
    Quantity.ENERGY_IMPORT: "Wh",
    Quantity.ENERGY_EXPORT: "Wh",
    Quantity.ENERGY_COMBINED: "Wh",
    Quantity.ENERGY_T1: "Wh",
    Quantity.ENERGY_T2: "Wh",
    Quantity.ENERGY_T3: "Wh",
    Quantity.ENERGY_T4: "Wh",
    Quantity.POWER: "W",
    Quantity.VOLTAGE_A: "dV",  # 0.1 V
    Quantity.VOLTAGE_B: "dV",
    Quantity.VOLTAGE_C: "dV",
    Quantity.CURRENT_A: "mA",
    Quantity.CURRENT_B: "mA",
    Quantity.CURRENT_C: "mA",
    Quantity.FREQUENCY: "cHz",  # 0.01 Hz
    Quantity.POWER_FACTOR: "milli",  # 0.001
    Quantity.REACTIVE_POWER: "var",
    Quantity.APPARENT_POWER: "VA",
}


@dataclass(frozen=True, slots=True)
class Reading:
    """One poll of one meter: when, which meter, and its values in :data:`UNITS`.

    ``meter`` is the meter's identity in the gateway: a DL/T 645 address (12 digits)
    or ``"<bus>:<unit id>"`` for a Modbus meter, as the configuration names it.
    ``ts_ms`` is UTC milliseconds since the Unix epoch.  ``flags`` carries
    :data:`FLAG_TIME_UNTRUSTED` and friends.
    """

    meter: str
    ts_ms: int
    values: dict[Quantity, int] = field(default_factory=dict)
    flags: int = 0


FLAG_TIME_UNTRUSTED = 1
"""The gateway's clock was not trusted when this reading was taken (design.md)."""
FLAG_ESTIMATED = 2
"""Values were estimated or interpolated, not read."""

__all__ += ["FLAG_ESTIMATED", "FLAG_TIME_UNTRUSTED"]
FLAG_ROLLOVER = 4
"""An energy register passed its maximum (999999.99 kWh) and wrapped to zero since the
meter's previous reading: the consumption in between is this value + the register's
modulus - the previous value, not a negative number."""
FLAG_DISCONTINUITY = 8
"""The energy registers do not continue from the meter's previous reading (it went
backwards, jumped impossibly, or the meter was swapped): no consumption may be
computed between this reading and the previous one; an event says why."""

__all__ += ["FLAG_DISCONTINUITY", "FLAG_ROLLOVER"]

FLAG_CURVE = 16
"""A load-curve point (e.g. each quarter hour) the gateway computed from its own readings
of the meter, not a poll; with :data:`FLAG_ESTIMATED` when interpolated between two."""

__all__ += ["FLAG_CURVE"]


class EventCode(IntEnum):
    """Meter event codes (``MeterEvent.code``; wire codes: never renumber, only append)."""

    COMM_FAILURE = 1
    """N consecutive polls failed; detail: cause hint, polls, error."""
    COMM_RESTORED = 2
    """A flagged meter answers again; detail: failed polls, seconds down."""
    METER_NUMBER_CHANGED = 3
    """DI 04000402 differs from the recorded number; detail: old, new (and ``work_order:
    matched`` when new is the number a replacement/addition recorded: not held)."""
    REGISTER_ROLLOVER = 4
    """An energy register wrapped past its maximum; detail: quantity, old, new."""
    ENERGY_BACKWARDS = 5
    """An energy register went backwards (not a rollover); detail: quantity, old, new."""
    ENERGY_JUMP = 6
    """An energy register rose faster than the meter can measure; detail as above."""
    CLOCK_DRIFT = 7
    """A meter's clock is off; detail: offset_s."""
    CLOCK_CORRECTED = 8
    """A meter's clock was set; detail: method (broadcast | write), offset_s."""
    READINGS_DROPPED = 9
    """Unacknowledged readings of this meter were dropped for space; detail: count, range."""
    PREPAID_STATE = 10
    """An account's prepaid state changed (recorded on one of its meters); detail: account,
    old, new (normal | alarm1 | alarm2 | due_to_trip | may_close), balance (0.0001 yuan)."""
    RELAY_TRIPPED = 11
    """The meter confirmed its relay open; detail: account, balance (0.0001 yuan) that
    caused the trip, reason (arrears | restart | protect-lifted | quiet-ended | resume |
    test), sends."""
    RELAY_CLOSED = 12
    """The meter confirmed its relay closed; detail: account, balance, reason (top-up |
    restart | test), mode (allow | direct), sends."""
    RELAY_UNCONFIRMED = 13
    """A trip or close the meter did not confirm after every attempt (an alarm); detail:
    account, action (trip | close), balance, sends, position (open | closed | unknown),
    cause (the last refusal or failure)."""
    TRIP_STORM = 14
    """Too many accounts fell due to trip at once: tripping stopped until resumed (an
    alarm; recorded on the meter whose account tipped it); detail: account, accounts
    (due within the window), of (accounts that trip on arrears), window_s."""
    TRIP_DELAYED = 15
    """A trip was held back by the quiet policy (night or holiday); detail: account,
    balance, until (local ISO time it may go out)."""
    METER_REMOVED = 16
    """The meter left its account (gateway.lifecycle); detail: account, final_wh (final
    register x ratio), charged (its last interval), refund (paid back), balance (after),
    reason; money in 0.0001 yuan."""
    METER_REPLACED = 17
    """The meter was replaced (or its CT ratio changed: new is the same meter); detail:
    account, new, final_wh (-1: settled dead before), initial_wh, charged, reason; a
    replacement also carried, year_wh; a CT change also old_ratio, new_ratio."""
    DEAD_METER_SETTLED = 18
    """A dead meter was settled and removed; detail: account, energy_wh (charged for),
    estimated (1: an estimated back-charge 追补, 0: an approved manual final reading),
    register_wh, charged, balance, approved_by, reason."""
    VACANCY_EXCEPTION = 19
    """The daily exception list (gateway.tasks.vacancy): the meter, with no tenant, drew
    energy charged to the vacancy account that local day; detail: day (ISO), charges
    (ledger entries), amount (0.0001 yuan, > 0)."""
    SAFE_MODE = 20
    """The relays' safe mode (design.md, "What may never be lost"): the store was damaged
    at start and moved aside, so the balances start from zero and no trip goes out until
    the master restores them and sends RELAY_RESUME (recorded on the first relay meter;
    the master's ``master balances`` / ``master stats`` read it); detail: state (entered |
    ended), reason, since_ms, accounts (that trip on arrears)."""


__all__ += ["EventCode"]
