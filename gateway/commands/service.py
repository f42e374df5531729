"""The command service: one thread that checks, applies and answers the master's commands.

::

    service = CommandService(runtime, config.commands.public_key).start()
    uplink.on_command = service.submit      # the uplink's worker hands over the bytes
    ...
    service.stop()

Each command (bytes from ``down/cmd``) goes through the envelope checks of
:mod:`gateway.commands.envelope`, then the replay guard (:mod:`gateway.commands.replay`):
an id already carried out is refused ``REPLAYED`` and changes nothing; the reply
carries the original outcome under ``result["original"]`` (``status``, ``reason``,
``text``, ``result``, ``applied_ms``).  Then the kind's handler
(:data:`gateway.commands.handlers.HANDLERS`) runs, and its reply is recorded with the
command's id in a durable transaction -- the same one as the effect for a top-up
through the ledger; otherwise right after the effect and before the reply is sent.
A top-up is applied once by its top-up id in any case, so a crash between its entry
and the record cannot apply it twice: the repeat finds the entry.

The reply goes to ``publish`` (the runtime's uplink, ``up/reply``).  Commands are taken
one at a time, in arrival order.  Once an hour (with a trusted clock) the ids kept
past their time are forgotten.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from sqlite_utils import Database

from gateway.errors import CommandRefused, GatewayError
from gateway.protocols.command import (
    ArgValue,
    Command,
    CommandKind,
    CommandReply,
    ReasonCode,
    ReplyStatus,
    encode_reply,
)

from . import replay
from .envelope import check_envelope, check_time, refused
from .handlers import HANDLERS, Handler, InTransaction

if TYPE_CHECKING:
    from gateway.runtime import Runtime

__all__ = ["CommandService"]

_log = logging.getLogger("gateway.commands")
_STOP = b""
_PRUNE_EVERY_S = 3600.0
_STORE_TIMEOUT = 60.0


class CommandService:
    """Checks and applies commands for ``runtime`` on its own thread."""

    def __init__(
        self,
        runtime: Runtime,
        public_key: bytes | None,
        *,
        publish: Callable[[bytes], None] | None = None,
        handlers: dict[CommandKind, Handler] | None = None,
    ) -> None:
        """``publish``: where encoded replies go (default: the runtime's uplink, if any)."""
        self.runtime = runtime
        self.public_key = public_key
        self.handlers = dict(HANDLERS if handlers is None else handlers)
        self._publish = publish
        self._queue: queue.SimpleQueue[tuple[bytes, Future[CommandReply] | None]] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._stopping = False
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._last: dict[str, object] | None = None
        self._last_prune = 0.0

    # -- any thread -----------------------------------------------------------------------

    def start(self) -> CommandService:
        self._thread.start()
        if self.public_key is None:
            _log.warning("commands: no public key configured (commands.public_key): all refused")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the command in hand, refuse nothing more, end the thread."""
        self._stopping = True
        if self._thread.is_alive():
            self._queue.put((_STOP, None))
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, payload: bytes) -> Future[CommandReply]:
        """Queue a command's bytes (never blocks); the future gets the reply sent for it."""
        future: Future[CommandReply] = Future()
        if self._stopping:
            future.set_exception(GatewayError("the command service is stopped"))
            return future
        self._queue.put((bytes(payload), future))
        return future

    def status(self) -> dict[str, object]:
        with self._lock:
            return {
                "key": self.public_key is not None,
                "alive": self._thread.is_alive(),
                "queued": self._queue.qsize(),
                "counts": dict(self._counts),
                "last": self._last,
            }

    # -- the service thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                payload, future = self._queue.get(timeout=60.0)
            except queue.Empty:
                self._maybe_prune()
                continue
            if future is None:
                return
            try:
                reply = self.process(payload)
            except Exception as exc:  # a bug must not kill the service: answer INTERNAL
                _log.error("commands: failed on a command: %s", exc, exc_info=True)
                reply = CommandReply(b"", ReplyStatus.FAILED, ReasonCode.INTERNAL, str(exc)[:200])
            self._send(reply)
            future.set_result(reply)
            self._maybe_prune()

    def process(self, payload: bytes) -> CommandReply:
        """Check and apply one command; its reply (recorded when it was carried out)."""
        rt = self.runtime
        checked = check_envelope(
            payload, gateway_id=rt.config.gateway_id, public_key=self.public_key
        )
        if isinstance(checked, CommandReply):
            return self._count(None, checked)
        try:
            return self._carry_out(checked)
        except Exception as exc:  # the store failed (or a bug): say so, with the id
            _log.error("commands: %s failed: %s", _name(checked), exc, exc_info=True)
            return self._count(checked, _failed(checked, exc))

    def _carry_out(self, cmd: Command) -> CommandReply:
        """Checks 6 and 7, then the handler; the reply, recorded unless refused before it."""
        rt = self.runtime
        writer = rt.writer
        if writer is None:
            return self._count(cmd, _internal(cmd, "the store is not open"))
        ident = cmd.command_id
        done, floor = writer.call(
            lambda db: (replay.find(db, ident), replay.issued_floor(db))
        ).result(_STORE_TIMEOUT)
        late = check_time(cmd, now_ms=rt.now_ms(), trusted=rt.clock.trusted, issued_floor=floor)
        if late is not None:
            return self._count(cmd, late)
        if done is not None:
            return self._count(cmd, _replayed(cmd, done))
        handler = self.handlers.get(cmd.kind) if isinstance(cmd.kind, CommandKind) else None
        if handler is None:
            reply = refused(ident, ReasonCode.UNKNOWN_KIND, f"unknown command kind {int(cmd.kind)}")
            return self._count(cmd, self._record(cmd, reply))
        try:
            outcome = handler(rt, cmd)
        except CommandRefused as exc:
            return self._count(cmd, self._record(cmd, _refusal(cmd, exc)))
        except Exception as exc:  # a component's error: FAILED, and the id is spent
            _log.warning("commands: %s failed: %s", _name(cmd), exc, exc_info=True)
            return self._count(cmd, self._record(cmd, _failed(cmd, exc)))
        if isinstance(outcome, InTransaction):
            return self._count(cmd, self._apply_in_transaction(cmd, outcome))
        return self._count(cmd, self._record(cmd, outcome))

    def _apply_in_transaction(self, cmd: Command, work: InTransaction) -> CommandReply:
        writer = self.runtime.writer
        assert writer is not None
        now = self.runtime.now_ms()

        def run(db: Database) -> CommandReply:
            try:
                reply = work.run(db)
            except CommandRefused as exc:
                reply = _refusal(cmd, exc)  # nothing written by the refused work
            replay.record(db, cmd, reply, now)
            return reply

        try:
            return writer.call(run, durable=True).result(_STORE_TIMEOUT)
        except GatewayError as exc:  # the transaction was rolled back: effect and record
            _log.warning("commands: %s failed in the store: %s", _name(cmd), exc)
            return self._record(cmd, _failed(cmd, exc))

    def _record(self, cmd: Command, reply: CommandReply) -> CommandReply:
        """Remember ``cmd``'s id with ``reply``, durably, before the reply goes out."""
        writer = self.runtime.writer
        assert writer is not None
        now = self.runtime.now_ms()
        writer.call(lambda db: replay.record(db, cmd, reply, now), durable=True).result(
            _STORE_TIMEOUT
        )
        return reply

    def _send(self, reply: CommandReply) -> None:
        data = encode_reply(reply)
        publish = self._publish
        if publish is None:
            uplink = self.runtime.uplink
            publish = uplink.publish_reply if uplink is not None else None
        if publish is None:
            _log.info("commands: no uplink; reply for %s not sent", reply.command_id.hex() or "-")
            return
        try:
            publish(data)
        except GatewayError as exc:
            _log.warning("commands: reply not sent: %s", exc)

    def _count(self, cmd: Command | None, reply: CommandReply) -> CommandReply:
        status = ReplyStatus(reply.status).name
        reason = _reason_name(reply.reason)
        kind = _name(cmd) if cmd is not None else "-"
        ident = reply.command_id.hex() or "-"
        line = f"commands: {kind} {ident} {status}"
        if reply.status != ReplyStatus.OK:
            line += f" {reason}: {reply.text}"
        (_log.info if reply.status == ReplyStatus.OK else _log.warning)(line)
        with self._lock:
            self._counts[status if reply.status == ReplyStatus.OK else f"{status}:{reason}"] += 1
            self._last = {"command_id": ident, "kind": kind, "status": status, "reason": reason}
        return reply

    def _maybe_prune(self) -> None:
        rt = self.runtime
        now = time.monotonic()
        if now - self._last_prune < _PRUNE_EVERY_S or not rt.clock.trusted or rt.writer is None:
            return
        self._last_prune = now
        now_ms = rt.now_ms()
        try:
            gone = rt.writer.call(lambda db: replay.prune(db, now_ms)).result(_STORE_TIMEOUT)
        except GatewayError as exc:
            _log.warning("commands: forgetting old command ids failed: %s", exc)
            return
        if gone:
            _log.info("commands: forgot %d command ids kept past their expiry", gone)


def _name(cmd: Command) -> str:
    if isinstance(cmd.kind, CommandKind):
        return cmd.kind.name.lower().replace("_", "-")
    return f"kind-{int(cmd.kind)}"


def _reason_name(reason: ReasonCode | int) -> str:
    return reason.name if isinstance(reason, ReasonCode) else str(int(reason))


def _internal(cmd: Command, text: str) -> CommandReply:
    return CommandReply(cmd.command_id, ReplyStatus.FAILED, ReasonCode.INTERNAL, text)


def _failed(cmd: Command, exc: Exception) -> CommandReply:
    text = str(exc) if isinstance(exc, GatewayError) else f"{type(exc).__name__}: {exc}"
    return CommandReply(cmd.command_id, ReplyStatus.FAILED, ReasonCode.INTERNAL, text[:500])


def _refusal(cmd: Command, exc: CommandRefused) -> CommandReply:
    reason = ReasonCode.__members__.get(exc.reason, ReasonCode.BAD_ARGUMENTS)
    return refused(cmd.command_id, reason, exc.detail or exc.reason)


def _replayed(cmd: Command, done: replay.Done) -> CommandReply:
    first = done.reply
    original: dict[str | int, ArgValue] = {
        "status": int(first.status),
        "reason": int(first.reason),
        "text": first.text,
        "result": {key: value for key, value in first.result.items()},
        "applied_ms": done.applied_ms,
    }
    text = f"command already carried out ({ReplyStatus(first.status).name}); nothing changed"
    return CommandReply(
        cmd.command_id, ReplyStatus.REFUSED, ReasonCode.REPLAYED, text, {"original": original}
    )
