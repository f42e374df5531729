"""``gateway meter``: meter work orders for technicians, on the gateway's store file.

::

    gateway meter add     --config GW.yaml [--store PATH] METER --initial-kwh 12.34
                          [--account ID] [--ratio N] [--meter-number N12] --reason TEXT
    gateway meter remove  --config GW.yaml [--store PATH] METER --final-kwh 1234.56
                          --reason TEXT [--refund] [--operator NAME] [--at ISO]
    gateway meter replace --config GW.yaml [--store PATH] OLD NEW (--final-kwh X | --dead)
                          --initial-kwh Y [--new-ratio N] [--meter-number N12] --reason TEXT
    gateway meter ct      --config GW.yaml [--store PATH] METER --final-kwh X
                          [--initial-kwh Y] --new-ct 50/5 --reason TEXT
    gateway meter dead    --config GW.yaml [--store PATH] METER
                          (--final-kwh X | --estimate-kwh Y) --approved-by NAME --reason TEXT
    gateway meter confirm --config GW.yaml [--store PATH] METER --approved-by NAME
                          --reason TEXT [--no-charge-held]
    gateway meter list    --config GW.yaml [--store PATH]

Registers are given as the meter's display shows them (kWh, up to 3 decimals); the
command multiplies them by the meter's ratio (CT x PT: the store's record, else the
configuration's).  Each action is one durable transaction (:mod:`gateway.lifecycle`).
Run it with the gateway stopped (or tell the running one to reload): a running gateway
keeps its own cache of balances; for a running gateway the master sends the same
operations as the signed METER_CHANGE command (:mod:`gateway.commands.changes`).  After
a replacement or CT change, update the configuration (the new meter, the new
``ct_ratio``) before starting the gateway again.  ``--meter-number``: the new meter's
nameplate number (12 digits, DI 04000402): recorded, so the gateway does not hold the
meter when it reads that number (the work order's swap, no ``confirm`` needed).
Exit status 2 when the action is refused (nothing is written).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["configure", "run"]

_ACTIONS = {
    "add": "add a meter to an account: its start register is the baseline",
    "remove": "remove a meter: final reading charged, optional refund of the balance",
    "replace": "replace a meter: final reading of the old, baseline of the new, tiers carried",
    "ct": "change a meter's CT ratio: final at the old ratio, baseline at the new",
    "dead": "settle a dead meter: approved manual final reading or estimated back-charge",
    "confirm": "confirm a meter held because its number changed without a work order",
    "list": "list the meters the store records (removed, replaced, held, ...)",
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="meter_command", metavar="ACTION", required=True)
    for name, text in _ACTIONS.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", required=True, metavar="FILE", help="the gateway's YAML file")
        p.add_argument("--store", metavar="PATH", help="store file (default: the config's)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        if name == "list":
            continue
        p.add_argument("meter", metavar="METER", help="meter id")
        if name == "replace":
            p.add_argument("new", metavar="NEW", help="the new meter's id")
        if name != "confirm":
            p.add_argument("--at", metavar="ISO", help="when (ISO time with offset; default now)")
        p.add_argument("--reason", required=True, help="why (kept with the record)")
        if name == "add":
            p.add_argument("--account", help="the account (default: the config's)")
            p.add_argument("--ratio", type=int, help="CT x PT (default: the config's)")
        if name in ("add", "remove", "replace", "ct"):
            p.add_argument("--operator", default="", help="who did it")
        if name in ("remove", "replace", "ct", "dead"):
            p.add_argument("--final-kwh", metavar="KWH", help="final register on the display")
        if name in ("add", "replace", "ct"):
            p.add_argument("--initial-kwh", metavar="KWH", help="the new register on the display")
        if name in ("add", "replace"):
            p.add_argument(
                "--meter-number",
                metavar="DIGITS",
                help="the new meter's nameplate number (12 digits): its swap is not held",
            )
        if name == "remove":
            p.add_argument(
                "--refund", action="store_true", help="pay back a positive balance (to 0)"
            )
        if name == "replace":
            p.add_argument(
                "--dead", action="store_true", help="the old meter was settled dead before"
            )
            p.add_argument("--new-ratio", type=int, help="the new meter's CT x PT (default: same)")
        if name == "ct":
            p.add_argument("--new-ct", required=True, help="the new CT: '50/5' or a ratio like 10")
        if name == "dead":
            p.add_argument("--estimate-kwh", metavar="KWH", help="energy estimated since (追补)")
        if name in ("dead", "confirm"):
            p.add_argument("--approved-by", required=True, help="who approved it")
        if name == "confirm":
            p.add_argument(
                "--no-charge-held",
                action="store_true",
                help="do not charge what the meter measured while held",
            )


def _wh(text: str | None, ratio: int, what: str) -> int:
    from gateway.errors import LifecycleRefused

    if text is None:
        raise LifecycleRefused(f"{what} is needed")
    try:
        kwh = Decimal(text)
    except InvalidOperation:
        raise LifecycleRefused(f"{what}: {text!r} is not a number of kWh") from None
    wh = kwh * 1000
    if not kwh.is_finite() or kwh < 0 or wh != wh.to_integral_value():
        raise LifecycleRefused(f"{what}: {text!r} must be kWh >= 0 with at most 3 decimals")
    return int(wh) * ratio


def _ct(text: str) -> int:
    from gateway.errors import LifecycleRefused

    primary, _, secondary = text.partition("/")
    try:
        a, b = int(primary), int(secondary or 1)
    except ValueError:
        raise LifecycleRefused(f"--new-ct {text!r}: give '50/5' or a whole ratio") from None
    if a <= 0 or b <= 0 or a % b:
        raise LifecycleRefused(f"--new-ct {text!r} is not a whole ratio")
    return a // b


def _at(text: str | None) -> int:
    from gateway.errors import LifecycleRefused

    if text is None:
        return int(datetime.now(UTC).timestamp() * 1000)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise LifecycleRefused(f"--at {text!r} is not an ISO time") from None
    if when.tzinfo is None:
        raise LifecycleRefused(f"--at {text!r} needs a UTC offset")
    return int(when.timestamp() * 1000)


def run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.store import Store

    config = load_config(args.config)
    store = Store.open(args.store or config.store.path, gateway_id=config.gateway_id)
    try:
        result = _act(args, config, store)
    finally:
        store.close()
    out = _plain(result)
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        print(f"meter {args.meter_command}: " + json.dumps(out, default=str))
    return 0


def _plain(result: Any) -> Any:
    if isinstance(result, list):
        return [_plain(r) for r in result]
    try:
        out = asdict(result)
    except TypeError:
        return result
    out.pop("entries", None)
    return out


def _act(args: argparse.Namespace, config: Any, store: Any) -> Any:
    from gateway import lifecycle
    from gateway.billing import BillingYear
    from gateway.errors import LifecycleRefused
    from gateway.lifecycle.accounts import accounts_in_force
    from gateway.protocols.quantities import Quantity, Reading
    from gateway.store.meters import MeterRecord, meter_records, record_of
    from gateway.tariff_updates import load_book

    action = args.meter_command
    if action == "list":
        return store.writer.call(meter_records).result(60)
    meter = args.meter
    ts_ms = _at(getattr(args, "at", None))
    # the configuration's tariff versions and those the master sent (gateway.tariff_updates)
    book, calendar = load_book(store.writer, config), BillingYear.from_config(config)
    # the accounts in force: the configuration's with those changed by command applied
    accounts = store.writer.call(lambda db: accounts_in_force(db, config)).result(60)
    record = store.writer.call(lambda db: record_of(db, meter)).result(60)
    billing = lifecycle.billing_of(config, meter, record, accounts.values())

    def reading(of: str, wh: int) -> Reading:
        return Reading(of, ts_ms, {Quantity.ENERGY_IMPORT: wh})

    def call(fn: Any) -> Any:
        return store.writer.call(fn, durable=True).result(60)

    if action == "add":
        configured = next((m for m in config.meters if m.id == meter), None)
        account = args.account or (configured.account if configured else None)
        ratio = args.ratio or (configured.ratio if configured else 1)
        wanted = MeterRecord(meter, account, "active", ratio, ts_ms)
        to = lifecycle.billing_of(config, meter, wanted, accounts.values())
        if to is None:
            raise LifecycleRefused(f"account {account} has no tariff: nothing to add to")
        start = reading(meter, _wh(args.initial_kwh, ratio, "--initial-kwh"))
        return call(
            lambda db: lifecycle.add_meter(
                db,
                meter,
                start,
                billing=to,
                reason=args.reason,
                ts_ms=ts_ms,
                operator=args.operator,
                meter_number=args.meter_number,
            )
        )
    if action == "confirm":
        return call(
            lambda db: lifecycle.confirm_meter(
                db,
                meter,
                approved_by=args.approved_by,
                reason=args.reason,
                ts_ms=int(datetime.now(UTC).timestamp() * 1000),
                charge_held=not args.no_charge_held,
            )
        )
    if billing is None:
        raise LifecycleRefused(f"meter {meter} is not billed (no account with a tariff)")
    final = (
        None
        if getattr(args, "final_kwh", None) is None
        else reading(meter, _wh(args.final_kwh, billing.ratio, "--final-kwh"))
    )
    if action == "remove":
        if final is None:
            raise LifecycleRefused("--final-kwh is needed")
        return call(
            lambda db: lifecycle.remove_meter(
                db,
                meter,
                final,
                billing=billing,
                book=book,
                refund=args.refund,
                reason=args.reason,
                ts_ms=ts_ms,
                operator=args.operator,
                calendar=calendar,
            )
        )
    if action == "replace":
        if (final is None) != args.dead:
            raise LifecycleRefused("give --final-kwh, or --dead for a meter settled dead")
        nb = replace(billing, meter=args.new, ratio=args.new_ratio or billing.ratio)
        initial = reading(args.new, _wh(args.initial_kwh, nb.ratio, "--initial-kwh"))
        return call(
            lambda db: lifecycle.replace_meter(
                db,
                meter,
                final,
                args.new,
                initial,
                billing=billing,
                new_billing=nb,
                book=book,
                reason=args.reason,
                ts_ms=ts_ms,
                operator=args.operator,
                calendar=calendar,
                meter_number=args.meter_number,
            )
        )
    if action == "ct":
        if final is None:
            raise LifecycleRefused("--final-kwh is needed")
        ratio = _ct(args.new_ct)
        pt = next((m.pt_ratio for m in config.meters if m.id == meter), 1)
        shown = args.initial_kwh if args.initial_kwh is not None else args.final_kwh
        initial = reading(meter, _wh(shown, ratio * pt, "--initial-kwh"))
        return call(
            lambda db: lifecycle.change_ct(
                db,
                meter,
                final,
                initial,
                billing=billing,
                new_ratio=ratio * pt,
                book=book,
                reason=args.reason,
                ts_ms=ts_ms,
                operator=args.operator,
                calendar=calendar,
            )
        )
    estimate = (
        None
        if args.estimate_kwh is None
        else _wh(args.estimate_kwh, billing.ratio, "--estimate-kwh")
    )
    return call(
        lambda db: lifecycle.settle_dead_meter(
            db,
            meter,
            final_wh=None if final is None else final.values[Quantity.ENERGY_IMPORT],
            estimated_wh=estimate,
            approved_by=args.approved_by,
            reason=args.reason,
            billing=billing,
            book=book,
            ts_ms=ts_ms,
            calendar=calendar,
        )
    )
