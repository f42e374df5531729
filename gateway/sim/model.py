"""The contract between the simulator's bus (line, timing, faults) and its meters.

A simulated bus (``gateway/sim/bus.py``) owns a pseudo-terminal, cuts the incoming
byte stream into request frames, times the line, injects faults and keeps the bus
log.  It hands each complete request frame to every :class:`SimMeter` on the bus;
a meter answers only frames addressed to it (never a broadcast) and returns the
reply bytes, or ``None``.  Meter physics (``gateway/sim/physics.py``) is advanced
by the shared calendar clock before each request is answered.

Meters are sans-IO: bytes in, bytes out, given the calendar instant ``now``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["FaultState", "SimMeter"]


@dataclass
class FaultState:
    """Faults injected into one meter (at start from SIM.yaml, or at run time).

    The bus applies them to the meter's reply: ``silent`` drops it, ``extra_delay``
    (seconds) answers late, ``bad_checksum`` corrupts the CRC/CS, ``garbage`` sends
    random bytes of the reply's length instead, ``wrong_address`` answers as
    another address.  ``until`` (monotonic seconds, or None for ever) ends all of them.
    """

    silent: bool = False
    extra_delay: float = 0.0
    bad_checksum: bool = False
    garbage: bool = False
    wrong_address: bool = False
    until: float | None = None

    def active(self, monotonic_now: float) -> bool:
        if self.until is not None and monotonic_now >= self.until:
            self.clear()
            return False
        return any(
            (self.silent, self.extra_delay > 0, self.bad_checksum, self.garbage, self.wrong_address)
        )

    def clear(self) -> None:
        self.silent = self.bad_checksum = self.garbage = self.wrong_address = False
        self.extra_delay = 0.0
        self.until = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "silent": self.silent,
            "extra_delay": self.extra_delay,
            "bad_checksum": self.bad_checksum,
            "garbage": self.garbage,
            "wrong_address": self.wrong_address,
        }


class SimMeter(ABC):
    """One simulated meter on a bus."""

    #: the meter's identity in the simulator config (``id:``)
    id: str
    #: seconds between the request's last byte and the reply's first byte
    turnaround: float
    #: faults currently injected
    faults: FaultState

    def __init__(self, meter_id: str, turnaround: float) -> None:
        self.id = meter_id
        self.turnaround = turnaround
        self.faults = FaultState()

    @abstractmethod
    def address_label(self) -> str:
        """How the bus log names this meter: 12-digit DL/T address or Modbus unit id."""

    @abstractmethod
    def handle(self, request: bytes, now: datetime) -> bytes | None:
        """Answer one complete request frame, or None (not ours, broadcast, no reply).

        ``now`` is the shared calendar clock's instant (UTC); the meter advances its
        physics to it before answering.  A broadcast may change state (time sync)
        but never gets a reply.
        """

    @abstractmethod
    def with_wrong_address(self, reply: bytes) -> bytes:
        """The same reply as if sent by another address (valid checksum)."""

    @abstractmethod
    def with_bad_checksum(self, reply: bytes) -> bytes:
        """The same reply with its checksum/CRC corrupted."""

    @abstractmethod
    def truth(self, now: datetime) -> dict[str, Any]:
        """JSON-able ground truth: registers in integer units, relay state, clock, faults."""

    def control(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """A meter-level control action (``button``, ``swap``, ``drift`` ...).

        Returns a JSON-able result; unknown actions raise ``ValueError``.
        """
        raise ValueError(f"meter {self.id} has no control action {action!r}")


@dataclass
class BusLogEntry:
    """One frame on the wire, in bus time (monotonic seconds)."""

    start: float
    end: float
    direction: str  # "request" (master -> meters) or "reply" (meter -> master)
    address: str | None  # the addressed / answering meter, if known
    result: str  # ok | collision | no-reply | broadcast | garbled | fault:<kind> | not-addressed
    nbytes: int
    meta: dict[str, Any] = field(default_factory=dict)


__all__ += ["BusLogEntry"]
