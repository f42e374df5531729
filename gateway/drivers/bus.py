"""One serial bus: a thread that owns the port, its job queue and the line's pacing.

Jobs (:mod:`gateway.drivers.jobs`) are served strictly by priority, then in arrival
order; when the queue is empty the bus asks its :class:`Scheduler` (the poller) for
the next periodic poll, so polls are made just in time and never pile up.

Pacing.  Before every request the bus waits until the line has been silent for the
gap (Modbus t3.5: 3.5 characters, 1.75 ms above 19200 baud; the same gap on a DL/T
645 line) measured from the end of the last byte the bus sent or received, whoever
sent it, plus what the addressed meter needs (``settle``).  The end of a request is
reckoned from the moment its ``write`` returned (never from before the write, which
may be delayed), plus its line time.  Bytes that arrive while waiting (a late reply,
noise) push the start back.  After a garbled or cut-off reply the bus also waits
:data:`IDLE_MARGIN`, since the rest may still be on its way; so it does after a
timeout (a reply later than its allowance may still start: its bytes, if they come,
push the next request back instead of colliding with it) and after a frame that gets
no reply (a broadcast): no reply shows when the line fell silent.

Reading.  A reply must start within the meter's allowance after the request's last
byte left (write time + wire time) and then keep coming at line speed: the bus waits
for the bytes the reader still needs at the line's speed plus :data:`IDLE_MARGIN`,
never a fixed second.  It sleeps while those bytes are on the wire instead of
waking for each one.

A vanished device (read or write fails, the pty hangs up) closes the port; the bus
fails the job in hand with cause ``port-error``, reports it, and reopens the port
with exponential backoff until the device is back.  Jobs submitted meanwhile fail at
once with ``port-error`` (a relay command must not wait minutes in a queue).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway.clock import Clock, SystemClock, monotonic
from gateway.config import SerialBus
from gateway.drivers.base import Exchange, MeterDriver, Reader
from gateway.drivers.jobs import Job, JobResult, Priority
from gateway.drivers.serialport import SerialPort
from gateway.errors import MeterTimeout, PortError, RemoteProtocolError
from gateway.protocols.linetiming import LineSettings

__all__ = ["GAP_MARGIN", "IDLE_MARGIN", "Bus", "BusStats", "Scheduler"]

_logger = logging.getLogger(__name__)

IDLE_MARGIN = 0.02
"""Seconds a reply may pause beyond its line time (OS and USB adapter latency)."""
GAP_MARGIN = 0.0002
"""Seconds added to the gap when it is measured from our own write (the write's
moment is known only to within scheduling latency)."""


class Scheduler(Protocol):
    """What a bus asks for periodic work (the poller implements it)."""

    def next_job(self, now: float) -> tuple[Job | None, float]:
        """The poll to make now, or None and the seconds until one is due."""
        ...

    def job_done(self, job: Job, result: JobResult, now: float) -> None:
        """The result of a job :meth:`next_job` handed out."""
        ...


@dataclass(slots=True)
class BusStats:
    """Counters of one bus since start (monotonic seconds)."""

    started: float = 0.0
    jobs: int = 0
    failed_jobs: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    stray_bytes: int = 0
    """Bytes that arrived while no reply was awaited."""
    idle_time: float = 0.0
    """Seconds with nothing to do (no job queued, no poll due)."""
    down_time: float = 0.0
    """Seconds without a usable port."""
    port_errors: int = 0
    reopens: int = 0


class Bus:
    """A serial bus with its meters' drivers; :meth:`start` runs its thread."""

    def __init__(
        self,
        config: SerialBus,
        drivers: Mapping[str, MeterDriver],
        *,
        clock: Clock | None = None,
        scheduler: Scheduler | None = None,
        on_port: Callable[[str, bool, str | None], None] | None = None,
        reopen_min: float = 0.05,
        reopen_max: float = 5.0,
        port: SerialPort | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.line: LineSettings = config.line
        self.gap = self.line.modbus_gap
        self.drivers = dict(drivers)
        self.clock: Clock = clock or SystemClock()
        self.scheduler = scheduler
        self.on_port = on_port
        self.reopen_min = reopen_min
        self.reopen_max = reopen_max
        self.port = port or SerialPort(config.port, self.line)
        self.stats = BusStats()
        self._queue: list[tuple[int, int, Job, Future[JobResult]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._up = False
        self._last_rx = -1.0
        self._tx_end = -1.0
        self._extra_quiet = 0.0
        self.port_error: str | None = None

    # --- public -------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether the port is open and usable."""
        return self._up

    def start(self) -> Bus:
        if self._thread is None:
            self.stats.started = monotonic()
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name=f"bus-{self.name}", daemon=True)
            self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        """Whether the bus thread runs (the service watchdog asks)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the job in hand; queued jobs are cancelled; the port is closed."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            pending, self._queue = self._queue, []
        for _, _, _, future in pending:
            future.cancel()
        self.port.close()
        self._up = False

    def submit(self, job: Job, priority: Priority = Priority.ON_DEMAND) -> Future[JobResult]:
        """Queue ``job``; its future resolves with the :class:`JobResult`."""
        future: Future[JobResult] = Future()
        if job.meter_id not in self.drivers:
            future.set_result(
                JobResult(
                    job.meter_id, False, error=f"no meter {job.meter_id!r} on bus {self.name}"
                )
            )
            return future
        with self._cond:
            if self._stopping:
                future.cancel()
                return future
            heapq.heappush(self._queue, (int(priority), next(self._seq), job, future))
            self._cond.notify_all()
        return future

    def status(self) -> dict[str, object]:
        """JSON-able state and counters (efficiency: line-limit time of the answered
        transactions / wall time while there was work; utilisation: / all wall time)."""
        s, line = self.stats, self.line
        now = monotonic()
        wall = max(1e-9, now - s.started) if s.started else 1e-9
        busy = max(1e-9, wall - s.idle_time - s.down_time)
        line_time = sum(d.stats.line_time for d in self.drivers.values())
        stats = [d.stats for d in self.drivers.values()]
        requests = sum(d.requests for d in stats)
        replies = sum(d.replies for d in stats)
        errors = sum(d.timeouts + d.garbled + d.wrong_address for d in stats)
        return {
            "name": self.name,
            "port": self.config.port,
            "protocol": self.config.protocol,
            "line": f"{line.baud} {line.data_bits}{line.parity}{line.stop_bits}",
            "up": self._up,
            "port_error": self.port_error,
            "parity_fallback": self.port.parity_fallback,
            "meters": len(self.drivers),
            "jobs": s.jobs,
            "failed_jobs": s.failed_jobs,
            "transactions": requests,
            "replies": replies,
            "errors": errors,
            "efficiency": round(line_time / busy, 4),
            "utilisation": round(line_time / wall, 4),
            "bytes_out": s.bytes_out,
            "bytes_in": s.bytes_in,
            "port_errors": s.port_errors,
            "reopens": s.reopens,
            "queued": len(self._queue),
        }

    # --- the thread -------------------------------------------------------------------

    def _now_ms(self) -> int:
        now: datetime = self.clock.now()
        return int(now.astimezone(UTC).timestamp() * 1000)

    def _take(self) -> tuple[Job, Future[JobResult] | None] | None:
        with self._cond:
            while self._queue:
                _, _, job, future = heapq.heappop(self._queue)
                if future.set_running_or_notify_cancel():
                    return job, future
        return None

    def _wait(self, seconds: float) -> float:
        """Sleep up to ``seconds`` or until a job is submitted; the time slept."""
        start = monotonic()
        with self._cond:
            if not self._queue and not self._stopping:
                self._cond.wait(max(0.0, seconds))
        return monotonic() - start

    def _run(self) -> None:
        try:
            while not self._stopping:
                if not self._up and not self._open():
                    continue
                taken = self._take()
                if taken is None and self.scheduler is not None:
                    job, wait = self.scheduler.next_job(monotonic())
                    if job is None:
                        self.stats.idle_time += self._wait(min(wait, 1.0))
                        continue
                    taken = (job, None)
                if taken is None:
                    self.stats.idle_time += self._wait(1.0)
                    continue
                self._serve(*taken)
        except Exception:  # pragma: no cover - a bug must be seen, not kill silently
            _logger.exception("bus %s stopped by an error", self.name)
            raise

    def _serve(self, job: Job, future: Future[JobResult] | None) -> None:
        driver = self.drivers.get(job.meter_id)
        if driver is None:
            result = JobResult(
                job.meter_id, False, error=f"no meter {job.meter_id!r} on bus {self.name}"
            )
        else:
            try:
                result = driver.run(job, self, self._now_ms)
            except PortError as exc:
                self._lost(exc)
                result = JobResult(job.meter_id, False, error=str(exc), cause="port-error")
        self.stats.jobs += 1
        if not result.ok:
            self.stats.failed_jobs += 1
        if future is not None:
            future.set_result(result)
        elif self.scheduler is not None:
            self.scheduler.job_done(job, result, monotonic())

    # --- the port ---------------------------------------------------------------------

    def _open(self) -> bool:
        delay = self.reopen_min
        down_since = monotonic()
        while not self._stopping:
            try:
                self.port.open()
            except PortError as exc:
                if self.port_error is None:
                    self._lost(exc)
                self._fail_queued()
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(delay)
                delay = min(self.reopen_max, delay * 2)
                continue
            restored = self.port_error is not None
            self.port_error = None
            self._up = True
            self._last_rx = self._tx_end = monotonic()
            if restored:
                self.stats.reopens += 1
                self.stats.down_time += monotonic() - down_since
                _logger.info("bus %s: port %s is back", self.name, self.config.port)
                if self.on_port is not None:
                    self.on_port(self.name, True, None)
            return True
        return False

    def _lost(self, exc: PortError) -> None:
        self._up = False
        self.port.close()
        self.stats.port_errors += 1
        self.port_error = str(exc)
        _logger.warning("bus %s: port lost: %s", self.name, exc)
        if self.on_port is not None:
            self.on_port(self.name, False, str(exc))

    def _fail_queued(self) -> None:
        while (taken := self._take()) is not None:
            job, future = taken
            if future is not None:
                future.set_result(
                    JobResult(job.meter_id, False, error=self.port_error, cause="port-error")
                )

    # --- the line (the Link a driver uses) ---------------------------------------------

    def _quiet(self, settle: float) -> None:
        """Return once the line has been silent for the gap (+ settle): drain what comes."""
        port = self.port
        gap = self.gap + settle + self._extra_quiet
        self._extra_quiet = 0.0
        while True:
            data = port.read_available()
            now = monotonic()
            if data:
                self._last_rx = now
                self.stats.stray_bytes += len(data)
                self.stats.bytes_in += len(data)
            free = max(self._last_rx + gap, self._tx_end + gap + GAP_MARGIN)
            if now >= free:
                return
            if port.wait_readable(free - now):
                data = port.read_available(ready=True)
                if data:
                    self._last_rx = monotonic()
                    self.stats.stray_bytes += len(data)
                    self.stats.bytes_in += len(data)

    def exchange(
        self,
        request: bytes,
        reader: Reader | None,
        *,
        allowance: float,
        max_reply: int,
        settle: float = 0.0,
    ) -> Exchange:
        """One paced request and its reply (see the module's docstring)."""
        port = self.port
        char = self.line.char_time
        self._quiet(settle)
        port.write(request)
        # Taken after the write: the bytes may have waited (a preempted thread, a slow
        # driver) and the first can leave no earlier than the write handed it over, so
        # the last has surely left only a full frame's line time after this.
        tx_end = monotonic() + len(request) * char
        self._tx_end = tx_end
        self.stats.bytes_out += len(request)
        if reader is None:
            # Nothing will come back to show when the line fell silent: allow for the
            # latency of the OS and a USB adapter before the next frame.
            self._extra_quiet = IDLE_MARGIN
            return Exchange(None, tx_end)
        deadline = tx_end + allowance
        first: float | None = None
        start = float("inf")  # estimate of the reply's first byte on the line
        last = tx_end
        n = 0
        try:
            while True:
                now = monotonic()
                if now >= deadline:
                    break
                if not port.wait_readable(deadline - now):
                    continue
                data = port.read_available(ready=True)
                if not data:
                    continue
                last = monotonic()
                self._last_rx = last
                n += len(data)
                self.stats.bytes_in += len(data)
                if first is None:
                    first = last
                reply = reader.feed(data)
                if reply is not None:
                    return Exchange(reply, tx_end, last, n)
                # Bytes read at once may have waited; the earliest (arrival - bytes so far
                # x char) is never before the reply's true start, so ``end`` is never early.
                start = min(start, last - n * char)
                end = start + (n + reader.needed()) * char
                deadline = min(
                    max(end, last + char) + IDLE_MARGIN, first + max_reply * char + IDLE_MARGIN
                )
                pause = end - char / 2 - monotonic()
                if pause > 0.0005:
                    time.sleep(pause)  # the bytes are on the wire: do not wake per byte
        except RemoteProtocolError:
            self._extra_quiet = IDLE_MARGIN
            raise
        self._extra_quiet = IDLE_MARGIN
        if n == 0:
            # A reply later than its allowance may still start: listen from now, so its
            # bytes, if they come, push the next request back instead of colliding.
            self._last_rx = max(self._last_rx, monotonic())
            raise MeterTimeout(f"no reply within {allowance * 1000:.0f} ms")
        raise RemoteProtocolError(f"garbled: {n} bytes without a valid reply")
