"""Meter drivers: the base class does timeouts, retries and statistics; a driver only
the transaction (request bytes out, reply bytes in, both through our sans-IO codecs).

A driver turns a job into :class:`Transaction` objects (:meth:`MeterDriver.plan`) and
the replies into a :class:`~gateway.drivers.jobs.JobResult`
(:meth:`MeterDriver.finish`).  :meth:`MeterDriver.run` carries them over a
:class:`Link` (the bus, which owns the port and the line's pacing), retrying a
transaction that got no answer or a garbled one, and gives up the job at the first
transaction that still fails (a dead meter costs one timeout per attempt, not one per
value).  Failures end as results with a cause hint, never as exceptions, except a
:class:`~gateway.errors.PortError`, which is the bus's business.

Reply timeouts come from the line, not a fixed second: a reply must start within the
meter's *allowance* after the request's last byte, and then keep coming at line
speed.  The allowance is learned from the meter's own turnaround once it has answered
(twice the slowest seen plus a margin), capped by the bus's ``timeout`` or the
driver's default; a retry always waits the full cap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

from gateway.config import Meter, SerialBus
from gateway.drivers.jobs import Job, JobResult
from gateway.errors import LocalProtocolError, MeterTimeout, RemoteProtocolError
from gateway.protocols.linetiming import LineSettings

__all__ = [
    "COMM_CAUSES",
    "DriverStats",
    "Exchange",
    "Link",
    "MeterDriver",
    "Reader",
    "Transaction",
    "WrongAddress",
]

COMM_CAUSES = frozenset({"no-answer", "garbled", "wrong-address", "bus-silent", "port-error"})
"""Causes meaning the meter did not communicate (a negative reply is an answer)."""

ALLOWANCE_MARGIN = 0.03
"""Seconds added to twice the slowest turnaround seen (scheduling and adapter latency)."""


class WrongAddress(RemoteProtocolError):
    """A well-formed reply came from another address than the one asked."""


class Reader(Protocol):
    """Sans-IO reply reader for one transaction."""

    def feed(self, data: bytes) -> object | None:
        """Add bytes; the decoded reply once complete.  RemoteProtocolError if bad."""
        ...

    def needed(self) -> int:
        """Fewest bytes still missing before a reply can be complete (>= 1)."""
        ...


@dataclass(frozen=True, slots=True)
class Transaction:
    """One request on the wire and how to read its reply.

    ``new_reader`` is None for a request nobody answers (broadcast).  ``max_reply``
    bounds the reply's size (it bounds the time a reply may take).  ``key`` says what
    the transaction is for (a DI, a planned read) for :meth:`MeterDriver.finish`.
    ``stamps``: the job's values are of the moment this request is sent (the energy
    read); without one, of the moment the job starts.
    """

    request: bytes
    new_reader: Callable[[], Reader] | None
    max_reply: int = 256
    key: object = None
    stamps: bool = False


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the link saw: the reply and its times (monotonic seconds)."""

    reply: object | None
    tx_end: float
    """When the request's last byte left (write time + its wire time)."""
    last: float | None = None
    """When the reply's last byte arrived."""
    rx_bytes: int = 0


class Link(Protocol):
    """The bus as a driver sees it: one paced request/reply exchange at a time."""

    line: LineSettings

    def exchange(
        self,
        request: bytes,
        reader: Reader | None,
        *,
        allowance: float,
        max_reply: int,
        settle: float = 0.0,
    ) -> Exchange:
        """Send ``request`` once the line has been silent long enough (the gap, plus
        ``settle``), then read until ``reader`` has a reply.  Raises MeterTimeout (no
        byte within ``allowance``), RemoteProtocolError (garbled; WrongAddress) or
        PortError."""
        ...


@dataclass(slots=True)
class DriverStats:
    """Per-meter counters since start."""

    jobs: int = 0
    requests: int = 0
    replies: int = 0
    retries: int = 0
    timeouts: int = 0
    garbled: int = 0
    wrong_address: int = 0
    negative: int = 0
    line_time: float = 0.0
    """Line-limit seconds of the answered transactions (wire + turnaround + gap)."""
    turnaround_min: float | None = None
    """Fastest turnaround seen (reply start after the request's end), seconds."""
    turnaround_max: float | None = None
    last_cause: str | None = None
    last_error: str | None = None


def _classify(exc: Exception) -> str:
    if isinstance(exc, MeterTimeout):
        return "no-answer"
    if isinstance(exc, WrongAddress):
        return "wrong-address"
    return "garbled"


class MeterDriver(ABC):
    """One meter on one bus.  Subclasses set :attr:`protocol` and implement
    :meth:`plan` and :meth:`finish` (and may override :meth:`default_allowance`)."""

    protocol: ClassVar[str]
    default_retries: ClassVar[int] = 1
    settle: float = 0.0
    """Extra silence this meter needs before a request to it (seconds)."""
    flagged: bool = False
    """Set by the poller for a meter flagged as failing: it is probed without retries."""

    def __init__(self, meter: Meter, bus: SerialBus) -> None:
        self.meter = meter
        self.bus = bus
        self.line: LineSettings = bus.line
        self.retries = bus.retries if bus.retries is not None else self.default_retries
        self.cap = bus.timeout if bus.timeout is not None else self.default_allowance()
        self.stats = DriverStats()

    @property
    def id(self) -> str:
        return self.meter.id

    def default_allowance(self) -> float:
        """Seconds a reply may take to start when nothing is known about the meter."""
        return 0.5

    def allowance(self, attempt: int) -> float:
        """Reply-start allowance for ``attempt`` (0 first): learned, then the cap."""
        seen = self.stats.turnaround_max
        if attempt or seen is None:
            return self.cap
        return min(self.cap, 2 * seen + ALLOWANCE_MARGIN + 2 * self.line.char_time)

    # --- what a driver implements ----------------------------------------------------

    @abstractmethod
    def plan(self, job: Job) -> Sequence[Transaction]:
        """The transactions of ``job``, in order (LocalProtocolError if impossible)."""

    @abstractmethod
    def finish(
        self, job: Job, replies: Sequence[tuple[Transaction, object]], ts_ms: int
    ) -> JobResult:
        """The result of ``job`` from the replies received (all of them, or those before
        a failure: :meth:`run` then marks the result failed)."""

    # --- the shared machinery ------------------------------------------------------

    def run(
        self, job: Job, link: Link, now_ms: Callable[[], int], *, retries: int | None = None
    ) -> JobResult:
        """Carry ``job`` out over ``link``; a failure is a result with a cause."""
        stats = self.stats
        stats.jobs += 1
        try:
            transactions = self.plan(job)
        except (LocalProtocolError, ValueError, TypeError, LookupError) as exc:
            return JobResult(self.id, False, error=f"cannot build request: {exc}")
        except RemoteProtocolError as exc:  # pragma: no cover - plan never decodes
            return JobResult(self.id, False, error=str(exc))
        if retries is None:
            retries = 0 if self.flagged else self.retries
        tries = 1 + retries
        ts_ms = now_ms()  # the values are of the moment the job starts, or of its stamp
        replies: list[tuple[Transaction, object]] = []
        for t in transactions:
            if t.stamps:
                ts_ms = now_ms()
            reply: object = None
            failure: Exception | None = None
            for attempt in range(tries):
                if attempt:
                    stats.retries += 1
                stats.requests += 1
                reader = t.new_reader() if t.new_reader is not None else None
                try:
                    ex = link.exchange(
                        t.request,
                        reader,
                        allowance=self.allowance(attempt),
                        max_reply=t.max_reply,
                        settle=self.settle,
                    )
                except (MeterTimeout, RemoteProtocolError) as exc:
                    failure = exc
                    cause = _classify(exc)
                    if cause == "no-answer":
                        stats.timeouts += 1
                    elif cause == "wrong-address":
                        stats.wrong_address += 1
                    else:
                        stats.garbled += 1
                    continue
                failure = None
                reply = ex.reply
                if reader is not None:
                    self._account(t, ex, link.line)
                break
            if failure is not None:
                partial = self._finish(job, replies, ts_ms)
                cause = _classify(failure)
                stats.last_cause, stats.last_error = cause, str(failure)
                return replace(partial, ok=False, error=str(failure), cause=cause)
            replies.append((t, reply))
        result = self._finish(job, replies, ts_ms)
        if not result.ok and result.cause and result.cause.startswith("negative"):
            stats.negative += 1
        stats.last_cause, stats.last_error = result.cause, result.error
        return result

    def _finish(
        self, job: Job, replies: Sequence[tuple[Transaction, object]], ts_ms: int
    ) -> JobResult:
        try:
            return self.finish(job, replies, ts_ms)
        except RemoteProtocolError as exc:
            return JobResult(self.id, False, error=str(exc), cause="garbled")

    def _account(self, t: Transaction, ex: Exchange, line: LineSettings) -> None:
        stats = self.stats
        stats.replies += 1
        if ex.last is None:
            return
        wire_reply = line.wire_time(ex.rx_bytes)
        turnaround = max(0.0, ex.last - ex.tx_end - wire_reply)
        if stats.turnaround_min is None or turnaround < stats.turnaround_min:
            stats.turnaround_min = turnaround
        if stats.turnaround_max is None or turnaround > stats.turnaround_max:
            stats.turnaround_max = turnaround
        stats.line_time += (
            line.wire_time(len(t.request)) + wire_reply + stats.turnaround_min + line.modbus_gap
        )

    def status(self) -> dict[str, object]:
        """JSON-able counters."""
        s = self.stats
        return {
            "jobs": s.jobs,
            "requests": s.requests,
            "replies": s.replies,
            "retries": s.retries,
            "timeouts": s.timeouts,
            "garbled": s.garbled,
            "wrong_address": s.wrong_address,
            "negative": s.negative,
            "turnaround_ms": None
            if s.turnaround_min is None
            else round(s.turnaround_min * 1000, 2),
            "last_cause": s.last_cause,
        }
