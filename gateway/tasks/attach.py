"""Wiring the calendar services (collection tasks, meter time sync) into a running gateway.

::

    rt.start()
    calendar = attach(rt)          # after the buses and pollers exist
    ...
    calendar.stop()                # before rt.stop(): the tick thread uses the buses

:func:`attach` builds a :class:`~gateway.tasks.runner.TaskRunner` and a
:class:`~gateway.timesync.TimeSync` over the runtime's clock, buses and store writer,
makes every poller's journal show its readings to the tasks (curves, midnight values),
adds ``tasks`` and ``timesync`` sections to the status, and starts one
:class:`~gateway.tasks.runner.TickThread` that ticks both (after a
:class:`~gateway.timesync.TimeTrust` for the system clock, which trusts it once NTP
has synchronized the kernel clock).  Not imported by
``gateway.tasks`` itself (it depends on :mod:`gateway.timesync`, which depends on it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig
from gateway.drivers.jobs import BusHandle
from gateway.poller import Journal as PollJournal
from gateway.store import JournalReader, StoreWriter
from gateway.tasks.model import TaskSettings, task_meters
from gateway.tasks.runner import TaskRunner, TickThread
from gateway.tasks.settlement import SettlementTask
from gateway.tasks.vacancy import VacancyTask
from gateway.timesync import TimeSync, TimeSyncSettings, TimeTrust

__all__ = ["Calendar", "RuntimeLike", "attach"]


class _Poller(Protocol):
    journal: PollJournal


class _Store(Protocol):
    def reader(self) -> JournalReader: ...


class RuntimeLike(Protocol):
    """What :func:`attach` uses of :class:`gateway.runtime.Runtime`."""

    clock: Clock
    config: GatewayConfig

    @property
    def writer(self) -> StoreWriter | None: ...

    @property
    def store(self) -> _Store | None: ...

    @property
    def pollers(self) -> Mapping[str, _Poller]: ...

    def bus_for(self, meter_id: str) -> BusHandle: ...

    def add_status(self, name: str, section: Callable[[], object]) -> None: ...


@dataclass
class Calendar:
    """The attached services; :meth:`stop` them before the runtime."""

    tasks: TaskRunner
    timesync: TimeSync
    thread: TickThread
    history: JournalReader | None

    def signal(self) -> None:
        """No new tick; :meth:`stop` then waits for the one in hand."""
        self.thread.signal()

    def stop(self, timeout: float | None = 30.0) -> None:
        self.thread.stop(timeout)
        if self.history is not None:
            self.history.close()
            self.history = None


def attach(
    runtime: RuntimeLike,
    *,
    interval: float = 10.0,
    tasks: TaskSettings | None = None,
    timesync: TimeSyncSettings | None = None,
) -> Calendar:
    """Start the collection tasks and the meter time sync of a started ``runtime``."""
    writer = runtime.writer
    if writer is None:
        raise RuntimeError("attach the calendar services to a started runtime")
    meters = task_meters(runtime.config)
    store = runtime.store
    history = store.reader() if store is not None else None
    runner = TaskRunner(runtime.clock, meters, runtime.bus_for, writer, tasks, history=history)
    for poller in runtime.pollers.values():
        poller.journal = runner.tee(poller.journal)
    sync = TimeSync(runtime.clock, meters, runtime.bus_for, writer, timesync)
    runtime.add_status("tasks", runner.status)
    runtime.add_status("timesync", sync.status)
    charger = getattr(runtime, "charger", None)  # its book: with the versions sent by command
    books = (lambda: charger.book) if charger is not None else None
    settlement = SettlementTask(runtime.clock, writer, runtime.config, books=books)
    runtime.add_status("settlement", settlement.status)
    vacancy = VacancyTask(runtime.clock, writer, runtime.config)
    runtime.add_status("vacancy", vacancy.status)
    ticks: list[Callable[[], object]] = [runner.tick, sync.tick, settlement.tick, vacancy.tick]
    if isinstance(runtime.clock, SystemClock):
        ticks.insert(0, TimeTrust(runtime.clock, writer).tick)
    thread = TickThread(ticks, interval, name="calendar").start()
    return Calendar(runner, sync, thread, history)
