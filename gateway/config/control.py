"""Readers of the prepaid-control sections: ``billing``, ``relays``, ``commands``, an
account's ``thresholds``, and the checks that need the rest of the file (the vacancy
tariff exists; a meter of an account that trips on arrears has a relay).

All money is integer 0.0001 yuan; every problem is recorded located on the
:class:`~gateway.yamlloc.Reader`, as the other sections do.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from datetime import date
from pathlib import Path

from yaml.nodes import Node, ScalarNode, SequenceNode

from gateway.config.model import (
    Account,
    Billing,
    Commands,
    Meter,
    Relays,
    SerialBus,
    ThresholdsConfig,
)
from gateway.yamlloc import (
    Invalid,
    MapReader,
    Reader,
    boolean,
    choice,
    describe,
    hhmm,
    identifier,
    integer,
    number,
    optional,
    string,
    suggest,
)

__all__ = [
    "check_control",
    "local_date",
    "month_day",
    "read_billing",
    "read_commands",
    "read_relays",
    "read_thresholds",
]

_TAG = "tag:yaml.org,2002:"
Item = tuple[object | None, MapReader]
_MONEY = 10**12  # 100 million yuan: anything beyond is a typo
_THRESHOLD_KEYS = ("alarm1", "alarm2", "overdraft_limit", "close_allow", "emergency_credit")
# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the raw key follows
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")


def month_day(node: Node) -> tuple[int, int]:
    """A day of every year written ``"MM-DD"`` (29 February is not one)."""
    if not isinstance(node, ScalarNode) or node.tag != _TAG + "str":
        raise Invalid(f'must be a day "MM-DD" like "01-01", not {describe(node)}')
    text = node.value.strip()
    month, _, day = text.partition("-")
    try:
        value = date(2023, int(month), int(day))  # 2023: not a leap year
    except ValueError:
        raise Invalid(f'must be a day of every year "MM-DD" like "01-01", not {text!r}') from None
    if len(month) != 2 or len(day) != 2:
        raise Invalid(f'must be written "MM-DD" like "01-01", not {text!r}')
    return value.month, value.day


def local_date(node: Node) -> date:
    """A local date ``YYYY-MM-DD`` (quoted or not)."""
    if not isinstance(node, ScalarNode) or node.tag not in (_TAG + "str", _TAG + "timestamp"):
        raise Invalid(f"must be a date YYYY-MM-DD, not {describe(node)}")
    try:
        return date.fromisoformat(node.value.strip())
    except ValueError:
        raise Invalid(f"must be a date YYYY-MM-DD, not {node.value!r}") from None


def _dates(node: Node) -> tuple[date, ...]:
    if node.tag == _TAG + "null":
        return ()
    if not isinstance(node, SequenceNode):
        raise Invalid(f"must be a list of dates YYYY-MM-DD, not {describe(node)}")
    out: list[date] = []
    for item in node.value:
        try:
            day = local_date(item)
        except Invalid as exc:
            raise Invalid(exc.message, item) from None
        if day in out:
            raise Invalid(f"{day} is listed twice", item)
        out.append(day)
    return tuple(sorted(out))


def read_thresholds(r: Reader, node: Node, base: ThresholdsConfig) -> ThresholdsConfig | None:
    """A ``thresholds`` mapping; keys not written are taken from ``base``."""
    m = MapReader(r, node, "thresholds")
    if not m.ok:
        return None
    m.expect(_THRESHOLD_KEYS)
    money = integer(-_MONEY, _MONEY)
    level = integer(0, _MONEY)
    alarm1 = m.get("alarm1", money, base.alarm1)
    alarm2 = m.get("alarm2", money, base.alarm2)
    overdraft = m.get("overdraft_limit", level, base.overdraft_limit)
    close_allow = m.get("close_allow", money, base.close_allow)
    emergency = m.get("emergency_credit", level, base.emergency_credit)
    if not m.ok:
        return None
    if alarm2 > alarm1:
        where = "alarm2" if m.value_node("alarm2") is not None else "alarm1"
        m.blame(where, f"{where}: alarm2 ({alarm2}) must not be above alarm1 ({alarm1})")
        return None
    return ThresholdsConfig(alarm1, alarm2, overdraft, close_allow, emergency)


def read_billing(r: Reader, node: Node | None) -> tuple[Billing | None, MapReader | None]:
    """The ``billing`` section (absent or null: the defaults, and no reader)."""
    d = Billing()
    if node is None or node.tag == _TAG + "null":
        return d, None
    m = MapReader(r, node, "billing")
    if not m.ok:
        return None, m
    m.expect(["year_start", "settlement_day", "vacancy_tariff", "hoarding_limit",
              "prorate_tiers", "holidays", "thresholds"])  # fmt: skip
    year_start = m.get("year_start", month_day, d.year_start)
    settlement_day = m.get("settlement_day", integer(1, 28), d.settlement_day)
    vacancy = m.get("vacancy_tariff", optional(identifier), None)
    hoarding = m.get("hoarding_limit", optional(integer(1, _MONEY)), None)
    prorate = m.get("prorate_tiers", boolean, d.prorate_tiers)
    holidays = m.get("holidays", _dates, ())
    thresholds: ThresholdsConfig | None = d.thresholds
    t_node = m.value_node("thresholds")
    if t_node is not None and t_node.tag != _TAG + "null":
        thresholds = read_thresholds(r, t_node, ThresholdsConfig())
    if not m.ok or thresholds is None:
        return None, m
    billing = Billing(year_start, settlement_day, vacancy, hoarding, prorate, holidays, thresholds)
    return billing, m


def read_relays(r: Reader, node: Node | None) -> Relays | None:
    """The ``relays`` section (absent or null: the defaults)."""
    d = Relays()
    if node is None or node.tag == _TAG + "null":
        return d
    m = MapReader(r, node, "relays")
    if not m.ok:
        return None
    m.expect(["close_mode", "confirm_attempts", "confirm_delay_s", "trip_valid_s",
              "quiet_hours", "quiet_on_holidays", "storm"])  # fmt: skip
    close_mode = m.get("close_mode", choice("allow", "direct"), d.close_mode)
    attempts = m.get("confirm_attempts", integer(1, 20), d.confirm_attempts)
    delay = m.get("confirm_delay_s", number(0, 600), d.confirm_delay_s)
    valid = m.get("trip_valid_s", integer(1, 86_400), d.trip_valid_s)
    quiet_on_holidays = m.get("quiet_on_holidays", boolean, d.quiet_on_holidays)
    quiet = None
    q_node = m.value_node("quiet_hours")
    if q_node is not None and q_node.tag != _TAG + "null":
        q = MapReader(r, q_node, "quiet_hours")
        if q.ok:
            q.expect(["from", "to"])
            start, end = q.get("from", hhmm), q.get("to", hhmm)
            if q.ok and start == end:
                q.blame("to", "to: quiet hours must not start and end at the same time")
            if q.ok:
                quiet = (start, end)
    storm = (d.storm_share_pct, d.storm_window_s, d.storm_min_accounts)
    s_node = m.value_node("storm")
    if s_node is not None and s_node.tag != _TAG + "null":
        s = MapReader(r, s_node, "storm")
        if s.ok:
            s.expect(["share_pct", "window_s", "min_accounts"])
            storm = (
                s.get("share_pct", integer(1, 100), d.storm_share_pct),
                s.get("window_s", integer(1, 86_400), d.storm_window_s),
                s.get("min_accounts", integer(1, 100_000), d.storm_min_accounts),
            )
    if not m.ok:
        return None
    share, window, least = storm
    return Relays(
        close_mode,  # type: ignore[arg-type]
        attempts,
        delay,
        valid,
        quiet,
        quiet_on_holidays,
        share,
        window,
        least,
    )


def _public_key(base_dir: Path) -> Callable[[Node], bytes]:
    def conv(node: Node) -> bytes:
        text = string(node).strip()
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if raw:
            if len(raw) != 32:
                raise Invalid(f"an Ed25519 public key is 32 bytes, this is {len(raw)}")
            return raw
        path = Path(text) if os.path.isabs(text) else base_dir / text
        try:
            pem = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not a text file"
            raise Invalid(
                f"neither base64 of 32 bytes nor a readable PEM file: {path}: {why}"
            ) from None
        return _pem_key(pem, path)

    return conv


def _pem_key(pem: str, path: Path) -> bytes:
    lines = [ln.strip() for ln in pem.splitlines() if ln.strip()]
    try:
        begin = lines.index("-----BEGIN PUBLIC KEY-----")
        end = lines.index("-----END PUBLIC KEY-----")
        der = base64.b64decode("".join(lines[begin + 1 : end]), validate=True)
    except (ValueError, binascii.Error):
        raise Invalid(f"{path}: not a PEM public key (BEGIN PUBLIC KEY)") from None
    if len(der) != len(_ED25519_SPKI) + 32 or not der.startswith(_ED25519_SPKI):
        raise Invalid(f"{path}: not an Ed25519 public key")
    return der[len(_ED25519_SPKI) :]


def read_commands(r: Reader, node: Node | None, base_dir: Path) -> Commands | None:
    """The ``commands`` section; a PEM path is relative to ``base_dir`` (the file's)."""
    if node is None or node.tag == _TAG + "null":
        return Commands()
    m = MapReader(r, node, "commands")
    if not m.ok:
        return None
    m.expect(["public_key"])
    key = m.get("public_key", optional(_public_key(base_dir)), None)
    return Commands(key) if m.ok else None


def check_control(
    r: Reader,
    billing: tuple[Billing | None, MapReader | None],
    buses: list[Item],
    meters: list[Item],
    accounts: list[Item],
    tariffs: list[Item],
) -> None:
    """The vacancy tariff exists; every meter of an account that trips on arrears has a
    relay (a Modbus meter whose profile says ``relay: none`` has none)."""
    b, bm = billing
    tariff_ids: Mapping[str, object] = {
        node.value: node for _, t in tariffs if isinstance(node := t.value_node("id"), ScalarNode)
    }
    if bm is not None and b is not None and b.vacancy_tariff and b.vacancy_tariff not in tariff_ids:
        listed = ", ".join(sorted(tariff_ids)) or "none defined"
        bm.blame(
            "vacancy_tariff",
            f"vacancy_tariff: unknown tariff {b.vacancy_tariff!r}"
            f"{suggest(b.vacancy_tariff, tariff_ids)} (known: {listed})",
        )
    trips = {a.id for a, _ in accounts if isinstance(a, Account) and a.trip_on_arrears}
    modbus = {b.name for b, _ in buses if isinstance(b, SerialBus) and b.protocol == "modbus"}
    for meter, m in meters:
        if not isinstance(meter, Meter) or meter.account not in trips:
            continue
        if meter.bus not in modbus or meter.profile is None:
            continue
        from gateway.drivers.profiles import builtin_registry

        registry = builtin_registry()
        if meter.profile not in registry:
            continue  # reported as an unknown profile
        if registry.get(meter.profile).relay is None:
            m.blame(
                "account",
                f"account: account {meter.account!r} trips on arrears, but meter {meter.id!r}"
                f" has no relay (profile {meter.profile}: relay none); set trip_on_arrears:"
                " false on the account or fit a meter with a relay",
            )
