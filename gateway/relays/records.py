"""The relay controller's records: each confirmed (or unconfirmed) position remembered in
the store together with its event, in one durable transaction when the journal is the
store writer, events, and the status alarms (:class:`Records`, a part of
:class:`~gateway.relays.controller.RelayController`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gateway.clock import Clock
from gateway.protocols.batch import MeterEvent
from gateway.protocols.quantities import EventCode
from gateway.relays import memory
from gateway.relays.memory import Position
from gateway.store.ledger import journal_with_charges

if TYPE_CHECKING:
    from sqlite_utils import Database

    from gateway.store.writer import StoreWriter

__all__ = ["Journal", "Records"]


class Journal(Protocol):
    def submit(self, record: MeterEvent) -> None: ...


class Records:
    """Events, remembered positions and alarms; mixed into the controller, whose
    attributes these are."""

    clock: Clock
    journal: Journal
    writer: StoreWriter
    _alarms: list[dict[str, object]]

    def _now_ms(self) -> int:
        return int(self.clock.now().timestamp() * 1000)

    def _record(
        self, meter: str, remember: Position, code: EventCode | None, **detail: int | str | None
    ) -> None:
        """Remember the position ``remember`` and record the event ``code`` (if any): in one durable
        transaction when the journal is the store writer, so that neither survives a kill
        without the other."""
        event = None if code is None else self._make_event(meter, code, detail)
        atomic = self.journal is self.writer
        if event is not None and not atomic:
            self.journal.submit(event)

        def save(db: Database) -> None:
            memory.save_position(db, meter, remember)
            if event is not None and atomic:
                journal_with_charges(db, event, ())

        self.writer.call(save, durable=True)

    def _make_event(
        self, meter: str, code: EventCode, detail: dict[str, int | str | None]
    ) -> MeterEvent:
        clean: dict[int | str, int | str] = {k: v for k, v in detail.items() if v is not None}
        return MeterEvent(meter, self._now_ms(), int(code), clean)

    def _event(self, meter: str, code: EventCode, **detail: int | str | None) -> None:
        self.journal.submit(self._make_event(meter, code, detail))

    def _alarm(self, kind: str, **detail: int | str | None) -> None:
        """Called with the lock held."""
        alarm: dict[str, object] = {"kind": kind, "ts_ms": self._now_ms()}
        alarm.update({k: v for k, v in detail.items() if v is not None})
        self._alarms.append(alarm)
        del self._alarms[:-50]
