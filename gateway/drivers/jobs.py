"""The job API of a bus: what other services ask a bus thread to do, and what they get.

A service (poller, collection tasks, time sync, relay commands, the console) never
touches a serial port.  It builds a :class:`ReadJob` or :class:`WriteJob`, hands it to
the :class:`BusHandle` of the meter's bus with a :class:`Priority`, and waits on the
returned :class:`concurrent.futures.Future` for a :class:`JobResult`.  The bus thread
runs jobs strictly by priority, then in arrival order.

Failure is a result, not an exception: ``JobResult.ok`` is false and ``cause`` says
why in the words of domain.md ("no-answer", "garbled", "wrong-address",
"negative:<bits>", "bus-silent", "port-error").
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol

from gateway.protocols.quantities import Quantity, Reading

__all__ = [
    "CAUSES",
    "BusHandle",
    "Job",
    "JobResult",
    "Priority",
    "ReadJob",
    "WriteJob",
]


class Priority(IntEnum):
    """Order of service on a bus: lower first.  A relay command jumps every queue."""

    RELAY = 0
    ON_DEMAND = 1
    TASK = 2
    POLL = 3


@dataclass(frozen=True, slots=True)
class ReadJob:
    """Read values from one meter.

    ``dis``: DL/T 645 data identifiers to read (one request each, in order); empty
    means the meter's periodic poll (its block DIs).  For a Modbus meter ``dis`` stays
    empty and ``quantities`` picks a subset of its profile's quantities (empty = all
    of the profile's poll plan).
    """

    meter_id: str
    dis: tuple[int, ...] = ()
    quantities: tuple[Quantity, ...] = ()


@dataclass(frozen=True, slots=True)
class WriteJob:
    """Send one protocol event to one meter as is.

    ``frame`` is a protocol event (e.g. ``dlt645.BroadcastTime``, ``dlt645.WriteRequest``,
    ``dlt645.RelayControl``, ``dlt645.FreezeRequest``); its address is used as given.
    ``expect_reply`` false (broadcasts) means the bus only keeps the silent gap after
    sending and the result is ok with no reply.
    """

    meter_id: str
    frame: object
    expect_reply: bool = True


Job = ReadJob | WriteJob


CAUSES = ("no-answer", "garbled", "wrong-address", "negative", "bus-silent", "port-error")
"""Cause hints a failed :class:`JobResult` may carry (``negative`` as ``negative:<bits>``)."""


@dataclass(frozen=True, slots=True)
class JobResult:
    """The outcome of one job.

    ``values``: for DL/T 645 reads, DI -> decoded value (``dlt645.Value``); for a
    write, ``{}``.  ``reading``: the values as a :class:`Reading` in gateway units
    with the meter's CT/PT ratios applied (``None`` if nothing mapped to a quantity).
    ``reply``: the decoded reply event of a :class:`WriteJob` (``None`` otherwise or
    when there was none).  ``error``: a one-line message when ``ok`` is false;
    ``cause``: one of :data:`CAUSES` (``negative:<bits>`` carries the meter's error
    byte in hex).  A read job of several DIs is ok when every DI answered; partial
    values are still in ``values``.
    """

    meter_id: str
    ok: bool
    values: dict[int, object] = field(default_factory=dict)
    reading: Reading | None = None
    error: str | None = None
    cause: str | None = None
    reply: object | None = None


class BusHandle(Protocol):
    """What a service holds to use one bus (``Runtime.bus_for(meter_id)``)."""

    name: str

    def submit(
        self, job: Job, priority: Priority = Priority.ON_DEMAND
    ) -> concurrent.futures.Future[JobResult]:
        """Queue ``job``; the future resolves with its :class:`JobResult` (never raises
        for a meter's failure; cancelled if the bus stops first)."""
        ...
