"""What each kind of command does: the table :data:`HANDLERS`, kind -> handler.

A handler gets the runtime and a command whose envelope passed every check, and
returns its reply -- or an :class:`InTransaction`, a function the service runs in
one durable store transaction together with the row that remembers the command
(a top-up through the ledger: its entry and the command's id commit together).
A handler refuses bad arguments by raising :class:`~gateway.errors.CommandRefused`
(``reason`` the name of a :class:`ReasonCode`); a component that is not running
(no relay control, no charging) is a ``FAILED`` reply with reason ``UNAVAILABLE``,
never a crash.

Arguments, per kind (all money in 0.0001 yuan, integers):

- ``TOP_UP``: ``account`` (text), ``amount`` (int), ``top_up_id`` (text, required: the
  master's own id of the payment, so that a command re-sent with a new command id
  cannot pay twice; ``topup_id`` is taken too), optional ``entry`` (``top_up``
  | ``compensation`` | ``reduction`` | ``reversal``), ``reason``, ``operator``,
  ``reverses`` (the reversed top-up's id).  Applied once by its top-up id.
- ``THRESHOLDS``: ``account`` (text, or null/absent: the default of every account),
  ``alarm1``, ``alarm2``, ``overdraft_limit``, ``close_allow``, ``emergency_credit``.
- ``PROTECT``: ``account``, ``on`` (bool).
- ``RELAY_RESUME``: none; lifts a trip-storm stop and ends safe mode (the store was
  damaged at start: docs/safe-mode.md; send it after restoring the balances with
  ``TOP_UP`` ``entry: compensation``): the relays trip the accounts still due (the reply
  says whether tripping was stopped, by a storm or safe mode; ``was_safe_mode`` and
  ``safe_mode_reason`` when it ended safe mode).
- ``RELAY_TEST``: ``meter``; the reply waits for the test (at most
  :data:`RELAY_TEST_TIMEOUT` s).
- ``TIME_SET``: optional ``time_ms`` (UTC ms; default the command's issue time).  A
  clock off by more than :data:`TIME_TOLERANCE_MS` is set (the test clock, or the
  system clock when the process may); then the time is trusted (source ``master``).
- ``BACK_FILL``: none; the collection tasks search their back-fill window again at
  their next tick (OK means scheduled).
- ``TARIFF``: one tariff version in the wire form of :mod:`gateway.tariff_updates.versions`
  (``id``, ``version``, ``effective`` UTC ms, ``kind`` and its prices), checked as the
  configuration's are; not newer than the book's: ``POLICY``.  Kept, in force at once; a
  late one re-rated with one adjustment (退补) per account (:mod:`gateway.tariff_updates`).
- ``ACCOUNT_CHANGE``, ``METER_CHANGE``: accounts opened, changed, closed; meters added,
  removed, replaced, CT changed, settled dead, confirmed (:mod:`gateway.commands.changes`).
- ``CONFIG``, ``FIRMWARE``: not supported by this gateway yet: ``FAILED`` / ``UNAVAILABLE``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlite_utils import Database

from gateway.clock import ManualClock, SystemClock
from gateway.commands.changes import account_change, meter_change
from gateway.errors import CommandRefused, GatewayError
from gateway.lifecycle.accounts import accounts_in_force
from gateway.prepaid import Thresholds
from gateway.protocols.batch import HealthKind, HealthRecord
from gateway.protocols.command import (
    ArgValue,
    Command,
    CommandKind,
    CommandReply,
    ReasonCode,
    ReplyStatus,
)
from gateway.store.ledger import EntryKind, TopUp, TopUpResult, apply_top_up, balance_of

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = [
    "HANDLERS",
    "RELAY_TEST_TIMEOUT",
    "TIME_TOLERANCE_MS",
    "Handler",
    "InTransaction",
    "Outcome",
    "failed",
    "ok",
]

_log = logging.getLogger("gateway.commands")

RELAY_TEST_TIMEOUT = 120.0
TIME_TOLERANCE_MS = 2_000
_TOP_UP_TIMEOUT = 60.0
_TARIFF_TIMEOUT = 150.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENTRY_KINDS = {
    "top_up": EntryKind.TOP_UP,
    "compensation": EntryKind.COMPENSATION,
    "reduction": EntryKind.REDUCTION,
    "reversal": EntryKind.REVERSAL,
}


@dataclass(frozen=True, slots=True)
class InTransaction:
    """Run ``run(db)`` in the durable transaction that also records the command."""

    run: Callable[[Database], CommandReply]


Outcome: TypeAlias = CommandReply | InTransaction
Handler: TypeAlias = Callable[["Runtime", Command], Outcome]


def ok(cmd: Command, text: str = "", **result: ArgValue) -> CommandReply:
    return CommandReply(cmd.command_id, ReplyStatus.OK, ReasonCode.NONE, text, dict(result))


def failed(cmd: Command, reason: ReasonCode, text: str) -> CommandReply:
    return CommandReply(cmd.command_id, ReplyStatus.FAILED, reason, text)


# -- arguments --------------------------------------------------------------------------


def _bad(text: str) -> CommandRefused:
    return CommandRefused(ReasonCode.BAD_ARGUMENTS.name, text)


def _arg(
    cmd: Command, name: str, kind: type, *, default: Any = ..., aliases: tuple[str, ...] = ()
) -> Any:
    for key in (name, *aliases):
        if key in cmd.args:
            value = cmd.args[key]
            break
    else:
        if default is ...:
            raise _bad(f"argument {name!r} is missing")
        return default
    if value is None and default is None:
        return None
    if kind is str and type(value) is int:
        return str(value)  # an id written as digits (``--arg account=101``) is still an id
    if type(value) is not kind:
        raise _bad(f"argument {name!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _plain(value: object) -> ArgValue:
    """A value a reply may carry (no floats: they become text)."""
    if value is None or isinstance(value, bool | int | str | bytes):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, int | str) else str(k): _plain(v) for k, v in value.items()}
    return str(value)


def _account(rt: Runtime, cmd: Command) -> str:
    """The command's ``account``: one in force (configured or opened by ACCOUNT_CHANGE,
    as the store's account records say; closed ones refused)."""
    account: str = _arg(cmd, "account", str)
    writer, config = rt.writer, rt.config
    if writer is None:
        known = {a.id for a in config.accounts}
    else:
        known = set(writer.call(lambda db: accounts_in_force(db, config)).result(60))
    if account not in known:
        raise _bad(f"no open account {account!r} on this gateway")
    return account


# -- handlers ---------------------------------------------------------------------------


def top_up(rt: Runtime, cmd: Command) -> Outcome:
    account: str = _arg(cmd, "account", str)
    entry_name: str = _arg(cmd, "entry", str, default="top_up")
    if entry_name not in _ENTRY_KINDS:
        raise _bad(f"entry {entry_name!r}: expected one of {', '.join(_ENTRY_KINDS)}")
    kind = _ENTRY_KINDS[entry_name]
    amount: int = _arg(cmd, "amount", int, default=0 if kind == EntryKind.REVERSAL else ...)
    request = TopUp(
        id=_arg(cmd, "top_up_id", str, aliases=("topup_id",)),
        account=account,
        kind=kind,
        amount=amount,
        ts_ms=rt.now_ms(),
        reason=_arg(cmd, "reason", str, default=""),
        operator=_arg(cmd, "operator", str, default=""),
        reverses=_arg(cmd, "reverses", str, default=None),
    )
    charger = rt.charger
    if charger is not None:  # the cache, prepaid state and relays learn of it too
        try:
            result: TopUpResult = charger.top_up(request).result(_TOP_UP_TIMEOUT)
        except FutureTimeout:
            text = (
                f"the store did not commit top-up {request.id!r} in {_TOP_UP_TIMEOUT:.0f} s; it"
                " may still be applied: send it again with the same top_up_id to learn"
            )
            return failed(cmd, ReasonCode.INTERNAL, text)
        return _top_up_reply(cmd, request, result, charger.balance(account))
    # No charging: straight to the ledger, in the transaction that records the command.
    limit = rt.config.billing.hoarding_limit

    def run(db: Database) -> CommandReply:
        result = apply_top_up(db, request, hoarding_limit=limit)
        return _top_up_reply(cmd, request, result, balance_of(db, account))

    return InTransaction(run)


def _top_up_reply(
    cmd: Command, request: TopUp, result: TopUpResult, balance: int | None
) -> CommandReply:
    if result.refused is not None or result.entry is None:
        raise CommandRefused(ReasonCode.POLICY.name, result.refused or "top-up refused")
    entry = result.entry
    text = "" if result.applied else f"top-up {request.id!r} was already applied"
    return ok(
        cmd,
        text,
        account=request.account,
        top_up_id=request.id,
        entry_id=entry.entry_id,
        amount=entry.amount,
        balance=balance,
        duplicate=not result.applied,
    )


def thresholds(rt: Runtime, cmd: Command) -> Outcome:
    account: str | None = _arg(cmd, "account", str, default=None)
    if account is not None:
        account = _account(rt, cmd)
    names = ("alarm1", "alarm2", "overdraft_limit", "close_allow", "emergency_credit")
    values = {name: _arg(cmd, name, int) for name in names}
    try:
        levels = Thresholds(**values)
    except (TypeError, ValueError) as exc:
        raise _bad(str(exc)) from exc
    charger = rt.charger
    if charger is None:
        return failed(cmd, ReasonCode.UNAVAILABLE, "charging is not running on this gateway")
    charger.set_thresholds(account, levels)
    return ok(cmd, account=account, **values)


def _relays(rt: Runtime) -> Any:
    return getattr(rt, "relays", None)


def protect(rt: Runtime, cmd: Command) -> Outcome:
    account = _account(rt, cmd)
    on: bool = _arg(cmd, "on", bool)
    relays = _relays(rt)
    if relays is None:
        return failed(cmd, ReasonCode.UNAVAILABLE, "relay control is not running on this gateway")
    relays.set_protect(account, on)
    return ok(cmd, account=account, protect=on)


def relay_resume(rt: Runtime, cmd: Command) -> Outcome:
    """Lift a trip-storm stop and end safe mode; the accounts still due are tripped."""
    relays = _relays(rt)
    if relays is None:
        return failed(cmd, ReasonCode.UNAVAILABLE, "relay control is not running on this gateway")
    safe = relays.safe_mode
    was_stopped = bool(relays.storm.stopped) or safe is not None
    relays.resume()
    if safe is not None:
        text = "safe mode ended"
        return ok(cmd, text, was_stopped=True, was_safe_mode=True, safe_mode_reason=safe.reason)
    text = "" if was_stopped else "tripping was not stopped"
    return ok(cmd, text, was_stopped=was_stopped)


def relay_test(rt: Runtime, cmd: Command) -> Outcome:
    meter: str = _arg(cmd, "meter", str)
    if meter not in {m.id for m in rt.config.meters}:
        raise _bad(f"no meter {meter!r} in this gateway's configuration")
    relays = _relays(rt)
    if relays is None:
        return failed(cmd, ReasonCode.UNAVAILABLE, "relay control is not running on this gateway")
    try:
        outcome = relays.test(meter).result(RELAY_TEST_TIMEOUT)
    except FutureTimeout:
        return failed(
            cmd, ReasonCode.DEVICE, f"relay test of {meter} not done in {RELAY_TEST_TIMEOUT:.0f} s"
        )
    except GatewayError as exc:
        return failed(cmd, ReasonCode.DEVICE, f"relay test of {meter}: {exc}")
    result = _plain(outcome)
    if isinstance(outcome, dict) and outcome.get("ok") is False:
        why = outcome.get("error") or "the relay did not trip and close as asked"
        text = f"relay test of {meter}: {why}"
        return CommandReply(
            cmd.command_id, ReplyStatus.FAILED, ReasonCode.DEVICE, text, {"test": result}
        )
    return ok(cmd, meter=meter, test=result)


def time_set(rt: Runtime, cmd: Command) -> Outcome:
    target: int = _arg(cmd, "time_ms", int, default=cmd.issued_at_ms)
    if not cmd.issued_at_ms - TIME_TOLERANCE_MS <= target <= cmd.expires_at_ms:
        raise _bad("time_ms must lie between the command's issue time and its expiry")
    clock = rt.clock
    offset = target - rt.now_ms()
    was_trusted = clock.trusted
    moved = abs(offset) > TIME_TOLERANCE_MS
    if moved:
        instant = _EPOCH + timedelta(milliseconds=target)
        if isinstance(clock, ManualClock):
            clock.set(instant)
        elif isinstance(clock, SystemClock):
            try:
                time.clock_settime_ns(time.CLOCK_REALTIME, target * 1_000_000)
            except OSError as exc:
                text = f"the clock is {offset} ms off and cannot be set here: {exc}"
                return failed(cmd, ReasonCode.DEVICE, text)
        else:
            kind = type(clock).__name__
            text = f"the clock is {offset} ms off and this clock ({kind}) cannot be set"
            return failed(cmd, ReasonCode.UNAVAILABLE, text)
    clock.trust("master")
    _log.info(
        "commands: time set by the master (offset %d ms, %s, was %s)",
        offset,
        "set" if moved else "within tolerance",
        "trusted" if was_trusted else "untrusted",
    )
    writer = rt.writer
    if writer is not None:
        values: dict[str, int | str] = {"trusted": 1, "source": "master", "offset_ms": offset}
        writer.submit(HealthRecord(rt.now_ms(), int(HealthKind.TIME_SOURCE), values))
    return ok(cmd, offset_ms=offset, set=moved, was_trusted=was_trusted)


def back_fill(rt: Runtime, cmd: Command) -> Outcome:
    calendar = rt.calendar
    if calendar is None:
        return failed(
            cmd, ReasonCode.UNAVAILABLE, "collection tasks are not running on this gateway"
        )
    request = getattr(calendar.tasks, "request_backfill", None)
    if request is None:
        return failed(
            cmd, ReasonCode.UNAVAILABLE, "back-fill requests are not supported by this gateway yet"
        )
    request()
    return ok(cmd, "back-fill scheduled for the collection tasks' next tick")


def tariff(rt: Runtime, cmd: Command) -> Outcome:
    """A tariff version (:mod:`gateway.tariff_updates`): checked like the configuration's,
    newer than the book's, kept and put in force; a late one re-rated (退补)."""
    from gateway.errors import ConfigError
    from gateway.tariff_updates import add_version, in_force, ms_of, newer_refusal, tariff_from_args

    try:
        version = tariff_from_args(cmd.args)
    except ConfigError as exc:
        raise _bad(exc.message) from exc
    charger = rt.charger
    if charger is None:
        return failed(cmd, ReasonCode.UNAVAILABLE, "charging is not running on this gateway")
    why = newer_refusal(charger, version)
    if why is not None:
        raise CommandRefused(ReasonCode.POLICY.name, why)
    try:
        pending = add_version(charger, version, rt.now_ms(), store_path=rt.store_path)
        added = pending.result(_TARIFF_TIMEOUT)
    except ValueError as exc:
        raise _bad(str(exc)) from exc
    except FutureTimeout:
        text = (
            f"the store did not commit tariff {version.id} v{version.version} in"
            f" {_TARIFF_TIMEOUT:.0f} s; it may still be applied: gateway status shows the"
            " versions in force"
        )
        return failed(cmd, ReasonCode.INTERNAL, text)
    except GatewayError as exc:
        return failed(cmd, ReasonCode.INTERNAL, f"tariff {version.id} v{version.version}: {exc}")
    adjustments: dict[str | int, ArgValue] = {}
    skipped: dict[str | int, ArgValue] = {}
    readings = 0
    if added.rerating is not None:
        r = added.rerating
        readings = r.readings
        for account, why in r.skipped.items():
            skipped[account] = why
        for adj in r.adjustments:
            entry = r.entries[adj.account_id]
            adjustments[adj.account_id] = {
                "amount": entry.amount,  # as on the ledger: negative, the tenant owes more
                "rerated": adj.rerated,
                "posted": adj.posted,
                "entry_id": entry.entry_id,
                "balance": entry.balance_after,
            }
    text = f"tariff {version.id} v{version.version} in force"
    if added.late:
        text += f"; late: {readings} readings re-rated, {len(adjustments)} adjustments"
        if skipped:
            text += f", {len(skipped)} accounts not re-rated (see not_rerated)"
    now = datetime.fromtimestamp(rt.now_ms() / 1000, UTC)
    return ok(
        cmd,
        text,
        tariff=version.id,
        version=version.version,
        effective=ms_of(version.effective),
        late=added.late,
        readings=readings,
        adjustments=adjustments,
        not_rerated=skipped,
        in_force=in_force(charger.book, [version.id], now),
    )


def not_supported(rt: Runtime, cmd: Command) -> Outcome:
    name = CommandKind(cmd.kind).name.lower().replace("_", "-")
    return failed(cmd, ReasonCode.UNAVAILABLE, f"{name} is not supported by this gateway yet")


HANDLERS: dict[CommandKind, Handler] = {
    CommandKind.TOP_UP: top_up,
    CommandKind.TARIFF: tariff,
    CommandKind.THRESHOLDS: thresholds,
    CommandKind.PROTECT: protect,
    CommandKind.RELAY_TEST: relay_test,
    CommandKind.ACCOUNT_CHANGE: account_change,
    CommandKind.METER_CHANGE: meter_change,
    CommandKind.TIME_SET: time_set,
    CommandKind.BACK_FILL: back_fill,
    CommandKind.CONFIG: not_supported,
    CommandKind.FIRMWARE: not_supported,
    CommandKind.RELAY_RESUME: relay_resume,
}
"""Kind -> handler; a kind missing here is refused ``UNKNOWN_KIND``."""
