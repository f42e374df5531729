"""The METER_CHANGE and ACCOUNT_CHANGE commands: the meter lifecycle and account changes
(:mod:`gateway.lifecycle`) asked for by the master.

Each runs through :meth:`gateway.charging.Charger.apply`: charging paused, one durable
transaction, the charger reloaded before any further reading is rated.  Its lifecycle
reference is ``cmd:<command id hex>``, so a command carried out but not yet recorded
when the gateway stopped is not done twice when it is sent again (the reply says it was
done already).  Arguments (registers and energies in Wh as the gateway journals them,
i.e. the register x the meter's ratio; integers):

``METER_CHANGE``: ``op`` and ``meter``, ``reason`` (text, required), ``operator``;

- ``add``: ``initial_wh``; optional ``account`` (default the configuration's),
  ``ratio`` (default the record's, else the configuration's) and ``meter_number``;
- ``remove``: ``final_wh``, optional ``refund`` (bool, default false);
- ``replace``: ``new`` (the new meter's id), ``final_wh`` (null: the old meter was
  settled dead), ``initial_wh`` (the new meter's, x its ratio), optional ``new_ratio``
  and ``meter_number``;
- ``ct``: ``final_wh`` (x the old ratio), ``initial_wh`` (x the new), ``new_ratio``;
- ``dead``: ``final_wh`` (approved manual final reading) or ``estimated_wh`` (energy
  estimated since the last rated reading), ``approved_by``;
- ``confirm``: ``approved_by``, optional ``charge_held`` (default true); the meter's
  poller stops showing it ``swapped``.

``meter_number`` (text, 12 digits): the new meter's nameplate number.  It is recorded
with the meter's record: when the poller then reads that number (METER_NUMBER_CHANGED)
the swap is this work order's, so the meter is not held and needs no ``confirm``
(:meth:`gateway.charging.Charger.add_number_listener`); if the poller has read it
already (and the meter shows ``swapped``), the command itself clears the flag.

``ACCOUNT_CHANGE``: ``op`` and ``account``, ``reason``;

- ``open``: ``type`` (prepaid | postpaid | unbilled), ``tariff`` (null for unbilled),
  optional ``trip_on_arrears`` (default: prepaid) and ``opened`` (ISO day; default today);
- ``change``: any of ``type``, ``tariff``, ``trip_on_arrears``;
- ``close``: optional ``operator``; the account's meters must be removed first; a
  positive balance is refunded to 0.

A missing or mistyped argument, an unknown op or meter: ``BAD_ARGUMENTS``; what the
lifecycle refuses (:class:`~gateway.errors.LifecycleRefused`): ``POLICY`` with its
reason; no charging on this gateway: ``FAILED`` / ``UNAVAILABLE``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, replace
from datetime import date
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from gateway import lifecycle
from gateway.errors import CommandRefused, LifecycleRefused
from gateway.lifecycle.accounts import accounts_in_force
from gateway.protocols.command import ArgValue, Command, CommandReply, ReasonCode
from gateway.protocols.quantities import Quantity, Reading
from gateway.store.meters import MeterRecord, is_meter_number, record_of

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = ["ACCOUNT_OPS", "METER_OPS", "account_change", "meter_change"]

_log = logging.getLogger("gateway.commands")

METER_OPS = ("add", "remove", "replace", "ct", "dead", "confirm")
ACCOUNT_OPS = ("open", "change", "close")
_TIMEOUT = 120.0


def _bad(text: str) -> CommandRefused:
    return CommandRefused(ReasonCode.BAD_ARGUMENTS.name, text)


def _arg(cmd: Command, name: str, kind: type, default: Any = ...) -> Any:
    if name not in cmd.args or (cmd.args[name] is None and default is None):
        if default is ...:
            raise _bad(f"argument {name!r} is missing")
        return default
    value = cmd.args[name]
    if kind is str and type(value) is int:
        return str(value)  # an id written as digits is still an id
    if type(value) is not kind:
        raise _bad(f"argument {name!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _wh(cmd: Command, name: str, default: Any = ...) -> Any:
    value = _arg(cmd, name, int, default)
    if value is not None and value is not default and value < 0:
        raise _bad(f"argument {name!r} must be >= 0 Wh")
    return value


def _number(cmd: Command) -> str | None:
    number: str | None = _arg(cmd, "meter_number", str, None)
    if number is not None and not is_meter_number(number):
        raise _bad(f"argument 'meter_number' {number!r} must be 12 digits")
    return number


def _plain(result: object) -> dict[str, ArgValue]:
    out = asdict(result) if not isinstance(result, dict) else dict(result)  # type: ignore[call-overload]
    if "entries" in out:
        out["entry_ids"] = [e["entry_id"] for e in out.pop("entries")]
    return {k: v for k, v in out.items() if v is None or isinstance(v, bool | int | str | list)}


def _ok(cmd: Command, text: str, result: dict[str, ArgValue]) -> CommandReply:
    from gateway.commands.handlers import ok

    return ok(cmd, text, **result)


def _unavailable(cmd: Command) -> CommandReply:
    from gateway.commands.handlers import failed

    return failed(cmd, ReasonCode.UNAVAILABLE, "charging is not running on this gateway")


def _run(rt: Runtime, cmd: Command, what: str, fn: Callable[[Database], Any]) -> Any:
    """``fn`` through the charger; LifecycleRefused -> POLICY with its reason; None when
    this command's reference was done before (carried out, but its record lost: the
    gateway stopped in between)."""
    assert rt.charger is not None
    ref = f"cmd:{cmd.command_id.hex()}"

    def once(db: Database) -> Any:
        if db.execute("SELECT 1 FROM lifecycle_ops WHERE reference = ?", (ref,)).fetchone():
            return None
        return fn(db)

    try:
        return rt.charger.apply(once).result(_TIMEOUT)
    except LifecycleRefused as exc:
        raise CommandRefused(ReasonCode.POLICY.name, f"{what}: {exc}") from exc
    except FutureTimeout:
        raise CommandRefused(
            ReasonCode.INTERNAL.name, f"{what}: the store did not answer in {_TIMEOUT:.0f} s"
        ) from None


# -- METER_CHANGE --------------------------------------------------------------------------


def meter_change(rt: Runtime, cmd: Command) -> CommandReply:
    op: str = _arg(cmd, "op", str)
    if op not in METER_OPS:
        raise _bad(f"op {op!r}: expected one of {', '.join(METER_OPS)}")
    meter: str = _arg(cmd, "meter", str)
    configured = next((m for m in rt.config.meters if m.id == meter), None)
    if configured is None:
        raise _bad(f"no meter {meter!r} in this gateway's configuration")
    reason: str = _arg(cmd, "reason", str)
    operator: str = _arg(cmd, "operator", str, "")
    charger = rt.charger
    if charger is None:
        return _unavailable(cmd)
    ts_ms = rt.now_ms()
    ref = f"cmd:{cmd.command_id.hex()}"
    config, book, calendar = rt.config, charger.book, charger.calendar

    def reading(of: str, wh: int) -> Reading:
        return Reading(of, ts_ms, {Quantity.ENERGY_IMPORT: wh})

    def billing(db: Database) -> Any:
        found = lifecycle.billing_in(db, config, meter)
        if found is None:
            raise LifecycleRefused(f"meter {meter} is not billed (no account with a tariff)")
        return found

    fn: Callable[[Database], Any]
    if op == "add":
        initial_wh = _wh(cmd, "initial_wh")
        account = _arg(cmd, "account", str, None)
        ratio = _arg(cmd, "ratio", int, None)
        if ratio is not None and ratio < 1:
            raise _bad("argument 'ratio' must be >= 1")
        add_number = _number(cmd)

        def fn(db: Database) -> Any:
            record = record_of(db, meter)
            to_ratio = ratio or (record.ratio if record is not None else configured.ratio)
            to_account = account or configured.account
            wanted = MeterRecord(meter, to_account, "active", to_ratio, ts_ms)
            accounts = accounts_in_force(db, config)
            if to_account is not None and to_account not in accounts:
                raise LifecycleRefused(f"no open account {to_account!r}")
            to = lifecycle.billing_of(config, meter, wanted, accounts.values())
            if to is None:
                raise LifecycleRefused(f"account {to_account} has no tariff: nothing to add to")
            return lifecycle.add_meter(
                db,
                meter,
                reading(meter, initial_wh),
                billing=to,
                reason=reason,
                ts_ms=ts_ms,
                operator=operator,
                reference=ref,
                meter_number=add_number,
            )

    elif op == "remove":
        final_wh = _wh(cmd, "final_wh")
        refund: bool = _arg(cmd, "refund", bool, False)

        def fn(db: Database) -> Any:
            return lifecycle.remove_meter(
                db,
                meter,
                reading(meter, final_wh),
                billing=billing(db),
                book=book,
                refund=refund,
                reason=reason,
                ts_ms=ts_ms,
                operator=operator,
                reference=ref,
                calendar=calendar,
            )

    elif op == "replace":
        new: str = _arg(cmd, "new", str)
        final = _wh(cmd, "final_wh", None)
        initial_wh = _wh(cmd, "initial_wh")
        new_ratio = _arg(cmd, "new_ratio", int, None)
        if new_ratio is not None and new_ratio < 1:
            raise _bad("argument 'new_ratio' must be >= 1")
        new_number = _number(cmd)

        def fn(db: Database) -> Any:
            old = billing(db)
            nb = replace(old, meter=new, ratio=new_ratio or old.ratio)
            return lifecycle.replace_meter(
                db,
                meter,
                None if final is None else reading(meter, final),
                new,
                reading(new, initial_wh),
                billing=old,
                new_billing=nb,
                book=book,
                reason=reason,
                ts_ms=ts_ms,
                operator=operator,
                reference=ref,
                calendar=calendar,
                meter_number=new_number,
            )

    elif op == "ct":
        final_wh, initial_wh = _wh(cmd, "final_wh"), _wh(cmd, "initial_wh")
        new_ratio = _arg(cmd, "new_ratio", int)
        if new_ratio < 1:
            raise _bad("argument 'new_ratio' must be >= 1")

        def fn(db: Database) -> Any:
            return lifecycle.change_ct(
                db,
                meter,
                reading(meter, final_wh),
                reading(meter, initial_wh),
                billing=billing(db),
                new_ratio=new_ratio,
                book=book,
                reason=reason,
                ts_ms=ts_ms,
                operator=operator,
                reference=ref,
                calendar=calendar,
            )

    elif op == "dead":
        dead_final = _wh(cmd, "final_wh", None)
        estimated = _wh(cmd, "estimated_wh", None)
        if (dead_final is None) == (estimated is None):
            raise _bad("give exactly one of 'final_wh' and 'estimated_wh'")
        approved_by: str = _arg(cmd, "approved_by", str)

        def fn(db: Database) -> Any:
            return lifecycle.settle_dead_meter(
                db,
                meter,
                final_wh=dead_final,
                estimated_wh=estimated,
                approved_by=approved_by,
                reason=reason,
                billing=billing(db),
                book=book,
                ts_ms=ts_ms,
                reference=ref,
                calendar=calendar,
            )

    else:  # confirm
        approved: str = _arg(cmd, "approved_by", str)
        charge_held: bool = _arg(cmd, "charge_held", bool, True)
        poller = rt.pollers.get(configured.bus)
        swapped = poller is not None and meter in poller.status().get("swapped", [])  # type: ignore[operator]

        def fn(db: Database) -> Any:
            record = record_of(db, meter)
            if swapped and (record is None or record.status != "held"):
                # a swap the charger did not hold (an unbilled meter): only the poller's flag
                return {"meter": meter, "status": "active", "held": False}
            return lifecycle.confirm_meter(
                db,
                meter,
                approved_by=approved,
                reason=reason,
                ts_ms=ts_ms,
                charge_held=charge_held,
                reference=ref,
            )

    result = _run(rt, cmd, f"{op} {meter}", fn)
    if op == "confirm" or (op == "ct" and result is not None):
        poller = rt.pollers.get(configured.bus)
        if poller is not None and meter in poller.meters:
            poller.confirm(meter)  # the person at the meter: no longer "swapped"
    number = cmd.args.get("meter_number")
    if op in ("add", "replace") and result is not None and number is not None:
        _swapped_as_ordered(rt, str(cmd.args.get("new", meter)), str(number))
    if result is None:
        return _ok(cmd, f"{op} {meter} was already done by this command", {"op": op})
    out = {"op": op, **_plain(result)}
    text = ""
    new_id = str(cmd.args.get("new"))
    if op == "replace" and new_id not in {m.id for m in rt.config.meters}:
        text = (
            f"meter {new_id} is not in this gateway's configuration: it is polled and"
            " charged once the configuration lists it"
        )
    _log.info("commands: meter-change %s %s done", op, meter)
    return _ok(cmd, text, out)


def _swapped_as_ordered(rt: Runtime, meter: str, number: str) -> None:
    """The poller read the work order's number before the work order came (it shows the
    meter ``swapped``): the work order is the confirmation."""
    bus = next((m.bus for m in rt.config.meters if m.id == meter), None)
    poller = rt.pollers.get(bus) if bus is not None else None
    state = poller.meters.get(meter) if poller is not None else None
    if poller is not None and state is not None and state.number == number:
        poller.confirm(meter)


# -- ACCOUNT_CHANGE ------------------------------------------------------------------------


def account_change(rt: Runtime, cmd: Command) -> CommandReply:
    op: str = _arg(cmd, "op", str)
    if op not in ACCOUNT_OPS:
        raise _bad(f"op {op!r}: expected one of {', '.join(ACCOUNT_OPS)}")
    account: str = _arg(cmd, "account", str)
    reason: str = _arg(cmd, "reason", str)
    charger = rt.charger
    if charger is None:
        return _unavailable(cmd)
    ts_ms = rt.now_ms()
    ref = f"cmd:{cmd.command_id.hex()}"
    config, book = rt.config, charger.book
    fn: Callable[[Database], Any]
    if op == "open":
        kind: str = _arg(cmd, "type", str)
        tariff: str | None = _arg(cmd, "tariff", str, None)
        trip: bool = _arg(cmd, "trip_on_arrears", bool, kind == "prepaid")
        opened_text: str | None = _arg(cmd, "opened", str, None)
        try:
            opened = None if opened_text is None else date.fromisoformat(opened_text)
        except ValueError:
            raise _bad(f"opened {opened_text!r} is not an ISO day (YYYY-MM-DD)") from None

        def fn(db: Database) -> Any:
            return lifecycle.open_account(
                db,
                account,
                type=kind,  # type: ignore[arg-type]  # checked there
                tariff=tariff,
                trip_on_arrears=trip,
                opened=opened,
                config=config,
                book=book,
                reason=reason,
                ts_ms=ts_ms,
                reference=ref,
            )

    elif op == "change":
        new_kind: str | None = _arg(cmd, "type", str, None)
        new_tariff: str | None = _arg(cmd, "tariff", str, None)
        new_trip: bool | None = _arg(cmd, "trip_on_arrears", bool, None)

        def fn(db: Database) -> Any:
            return lifecycle.change_account(
                db,
                account,
                type=new_kind,  # type: ignore[arg-type]  # checked there
                tariff=new_tariff,
                trip_on_arrears=new_trip,
                config=config,
                book=book,
                reason=reason,
                ts_ms=ts_ms,
                reference=ref,
            )

    else:  # close
        operator: str = _arg(cmd, "operator", str, "")

        def fn(db: Database) -> Any:
            return lifecycle.close_account(
                db,
                account,
                config=config,
                reason=reason,
                ts_ms=ts_ms,
                operator=operator,
                reference=ref,
            )

    result = _run(rt, cmd, f"{op} account {account}", fn)
    if result is None:
        return _ok(cmd, f"{op} account {account} was already done by this command", {"op": op})
    _log.info("commands: account-change %s %s done", op, account)
    return _ok(cmd, "", {"op": op, **_plain(result)})
