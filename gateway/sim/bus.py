"""One simulated RS-485 bus: a raw pseudo-terminal, line timing, faults and the bus log.

A :class:`SimBus` owns one pty (``os.openpty``, both ends raw) and a stable symlink to
its slave side, and runs one thread that reads the master's requests, cuts them into
frames (:mod:`gateway.sim.framing`), hands each to the addressed meter and writes the
reply back, timed as on a wire:

- **Requests.**  A request starts when its first byte arrives (or when the master's
  previous bytes have left its UART, if later) and ends ``bytes x char_bits / baud``
  later, by the bus's *configured* framing (11 bits for 8E1, whatever termios says on
  the pty).
- **Collisions.**  A request that starts before the end of the previous frame plus
  the silent gap (Modbus t3.5, 1.75 ms above 19200 baud; the same rule for DL/T 645,
  whose standard sets no gap of its own) is corrupted: no reply, counted as a
  collision, and a reply still pending is lost with it.
- **Replies.**  The reply's first byte is due at the request's end plus the meter's
  turnaround (plus an injected delay).  It is written in paced chunks of at most
  about 5 ms of line time, each chunk once its last byte's line time has passed, so
  no byte reaches the pty before its physical end.  The log records the reply's end
  as the moment its last byte is handed to the pty (logged just before that write,
  so whoever has read the last byte finds the entry).
- **Timing off** (``timing=False``): no collisions, replies written at once (for the
  throughput benchmark).

Faults (:class:`~gateway.sim.model.FaultState` of a meter, or a whole bus silent for
a while: at run time, or ``silent_s`` seconds from :meth:`SimBus.start`) are applied
here.  The bus log keeps the last ``log_size`` frames
(:class:`~gateway.sim.model.BusLogEntry`, bus time = ``time.monotonic``); the
counters in :class:`BusCounters` never reset.

The bus keeps its own slave descriptor open, so a client closing and reopening the
link never makes the master side hang up.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import random
import select
import threading
import tty
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from gateway.clock import Clock, SystemClock, monotonic
from gateway.errors import PortError
from gateway.protocols.linetiming import LineSettings
from gateway.sim.framing import WireFrame, make_splitter
from gateway.sim.model import BusLogEntry, SimMeter

__all__ = ["LOG_SIZE", "BusCounters", "SimBus", "entry_dict"]

_logger = logging.getLogger(__name__)

LOG_SIZE = 100_000
"""Frames the bus log keeps (the oldest go first)."""
IDLE_FLUSH = 0.05
"""Seconds of silence after which the bytes of an incomplete frame are garbage (a pty
carries a whole write at once, so a frame never pauses this long halfway)."""
CHUNK_SECONDS = 0.005
"""Most line time one paced write of a reply covers."""
_EPS = 1e-6


@dataclass
class BusCounters:
    """What a bus has carried since it was created (never reset)."""

    requests: int = 0
    """Frames (or garbage) the master sent."""
    transactions: int = 0
    """Replies written in full."""
    collisions: int = 0
    garbled: int = 0
    """Requests with a bad CRC/checksum, an unknown function, or cut short."""
    broadcasts: int = 0
    no_reply: int = 0
    """Well-formed requests nobody answered (no such address, meter said nothing)."""
    faults_injected: int = 0
    """Requests or replies a fault acted on (silent, late, corrupted, bus silent)."""
    errors: int = 0
    """Exceptions raised by a meter's handler (a simulator bug; logged)."""
    bytes_in: int = 0
    bytes_out: int = 0
    busy_seconds: float = 0.0
    """Line time of every frame carried (requests and replies)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def entry_dict(entry: BusLogEntry) -> dict[str, Any]:
    """A bus log entry as a JSON-able dict."""
    return asdict(entry)


@dataclass
class _Reply:
    data: bytes
    start: float
    address: str | None
    result: str
    meta: dict[str, Any]
    sent: int = 0


class SimBus:
    """A simulated bus on a pty; ``start()`` opens it, ``stop()`` closes it.

    ``link`` is the stable path clients open; ``meters`` answer the frames addressed
    to them.  ``lock`` (shared by all buses of a simulator) is held while a meter
    handles a request, so control actions and truth reads see consistent meters.
    """

    def __init__(
        self,
        name: str,
        link: str | os.PathLike[str],
        protocol: str,
        line: LineSettings,
        *,
        timing: bool = True,
        silent_gap: float | None = None,
        meters: Iterable[SimMeter] = (),
        clock: Clock | None = None,
        lock: threading.RLock | None = None,
        log_size: int = LOG_SIZE,
        seed: int = 0,
        silent_s: float | None = None,
    ) -> None:
        if protocol not in ("modbus", "dlt645"):
            raise ValueError(f"protocol must be modbus or dlt645, not {protocol!r}")
        self.name = name
        self.link = Path(link)
        self.protocol = protocol
        self.line = line
        self.char_time = line.char_time
        self.timing = timing
        self.gap = line.modbus_gap if silent_gap is None else silent_gap
        self.clock: Clock = clock or SystemClock(trusted=True)
        self.lock = lock or threading.RLock()
        self.counters = BusCounters()
        self.meters: list[SimMeter] = []
        self._by_address: dict[str, list[SimMeter]] = {}
        for meter in meters:
            self.add_meter(meter)
        self._log: deque[BusLogEntry] = deque(maxlen=log_size)
        self._log_total = 0
        self._log_lock = threading.Lock()
        self._rng = random.Random(seed)
        self._silent_until = -math.inf
        self.silent_s = silent_s
        self._master = self._slave = -1
        self._wake_r = self._wake_w = -1
        self.pty_name: str | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- set-up -----------------------------------------------------------------

    def add_meter(self, meter: SimMeter) -> None:
        """Put ``meter`` on the bus (before or after start)."""
        with self.lock:
            self.meters.append(meter)
            self._by_address.setdefault(meter.address_label().upper(), []).append(meter)

    @property
    def path(self) -> str:
        """The stable path clients open (the symlink)."""
        return str(self.link)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Open the pty, point the link at it and start the bus thread."""
        if self.running:
            return
        master, slave = os.openpty()
        try:
            tty.setraw(master)
            tty.setraw(slave)
            os.set_blocking(master, False)
            pty_name = os.ttyname(slave)
            _replace_symlink(pty_name, self.link)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self.pty_name = master, slave, pty_name
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._splitter = make_splitter(self.protocol)
        self._rx_free = 0.0  # line time at which the master's previous bytes are out
        self._last_rx = 0.0
        self._line_end = -math.inf  # end of the last frame on the line
        self._reply: _Reply | None = None
        if self.silent_s is not None and self.silent_s > 0:
            self.set_silent(self.silent_s)  # from start, before any request can arrive
        self._thread = threading.Thread(target=self._run, name=f"sim-bus-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, close the pty and remove the link (if still ours)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        thread.join(timeout=5)
        self._thread = None
        with contextlib.suppress(OSError):
            if self.pty_name and os.readlink(self.link) == self.pty_name:
                os.unlink(self.link)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = self._wake_r = self._wake_w = -1

    # --- control ----------------------------------------------------------------

    def set_silent(self, seconds: float | None) -> None:
        """No meter answers for ``seconds`` (None: until cleared)."""
        self._silent_until = math.inf if seconds is None else monotonic() + seconds

    def clear_silent(self) -> None:
        self._silent_until = -math.inf

    @property
    def silent(self) -> bool:
        return monotonic() < self._silent_until

    @property
    def log(self) -> list[BusLogEntry]:
        """A copy of the bus log, oldest first (same as :meth:`entries`)."""
        return self.entries()

    def entries(self) -> list[BusLogEntry]:
        """A copy of the bus log, oldest first."""
        with self._log_lock:
            return list(self._log)

    def log_since(self, seq: int = 0, limit: int | None = None) -> tuple[list[BusLogEntry], int]:
        """Entries numbered ``seq`` and later (numbering never resets), and the next number.

        Entries that fell out of the bounded log are skipped.
        """
        with self._log_lock:
            first = self._log_total - len(self._log)
            skip = max(0, seq - first)
            stop = None if limit is None else skip + limit
            out = list(islice(self._log, skip, stop))
            return out, first + skip + len(out)

    @property
    def log_total(self) -> int:
        """Entries ever logged (the next entry's number)."""
        return self._log_total

    def status(self) -> dict[str, Any]:
        """JSON-able description: paths, line, counters."""
        return {
            "name": self.name,
            "path": self.path,
            "pty": self.pty_name,
            "protocol": self.protocol,
            "baud": self.line.baud,
            "framing": f"{self.line.data_bits}{self.line.parity}{self.line.stop_bits}",
            "char_bits": self.line.char_bits,
            "timing": self.timing,
            "silent_gap_ms": round(self.gap * 1000, 4),
            "silent": self.silent,
            "meters": [m.id for m in self.meters],
            "counters": self.counters.as_dict(),
        }

    # --- the thread ---------------------------------------------------------------

    def _append(self, entry: BusLogEntry) -> None:
        with self._log_lock:
            self._log.append(entry)
            self._log_total += 1

    def _run(self) -> None:
        try:
            while not self._stopping:
                timeout = self._timeout(monotonic())
                ready, _, _ = select.select([self._master, self._wake_r], [], [], timeout)
                now = monotonic()
                if self._master in ready:
                    self._read(now)
                self._pump(monotonic())
                if self._splitter.pending and monotonic() - self._last_rx >= IDLE_FLUSH:
                    garbage = self._splitter.flush()
                    if garbage is not None:
                        self._on_frame(garbage, monotonic())
        except Exception:  # pragma: no cover - a bug: say so, do not die silently
            _logger.exception("bus %s stopped by an error", self.name)

    def _timeout(self, now: float) -> float | None:
        deadlines: list[float] = []
        reply = self._reply
        if reply is not None:
            chunk = max(1, int(CHUNK_SECONDS / self.char_time))
            upto = min(reply.sent + chunk, len(reply.data))
            deadlines.append(reply.start + upto * self.char_time)
        if self._splitter.pending:
            deadlines.append(self._last_rx + IDLE_FLUSH)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _read(self, now: float) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: no slave open (we hold one, but be safe)
            if exc.errno != errno.EIO:
                raise
            self._stop_event_wait(0.01)
            return
        if not data:
            return
        self._last_rx = now
        if self.timing:
            start = max(now, self._rx_free)
            self._rx_free = start + len(data) * self.char_time
            char_time = self.char_time
        else:
            start, char_time = now, 0.0
        for frame in self._splitter.feed(data, start, char_time):
            self._on_frame(frame, now)

    def _stop_event_wait(self, seconds: float) -> None:
        select.select([self._wake_r], [], [], seconds)

    # --- requests ---------------------------------------------------------------

    def _on_frame(self, f: WireFrame, now: float) -> None:
        c = self.counters
        c.requests += 1
        c.bytes_in += f.nbytes
        c.busy_seconds += f.nbytes * self.char_time
        entry = BusLogEntry(f.start, f.end, "request", f.address, "ok", f.nbytes)
        if self.timing:
            collided = f.start < self._line_end + self.gap - _EPS
            self._line_end = max(self._line_end, f.end)
            if collided:
                c.collisions += 1
                entry.result = "collision"
                self._append(entry)
                self._cancel_reply("collision")
                return
        if not f.valid:
            c.garbled += 1
            entry.result = "garbled"
            entry.meta["hex"] = f.data[:64].hex(" ")
            self._append(entry)
            return
        if now < self._silent_until:
            c.faults_injected += 1
            entry.result = "fault:bus_silent"
            self._append(entry)
            return
        if f.broadcast or f.wildcard:
            targets = list(self.meters)
        else:
            targets = self._by_address.get(f.address or "", [])
        replies: list[tuple[SimMeter, bytes]] = []
        silenced = 0
        with self.lock:
            calendar_now = self.clock.now()
            for meter in targets:
                if meter.faults.active(now) and meter.faults.silent:
                    silenced += 1
                    continue
                try:
                    reply = meter.handle(f.data, calendar_now)
                except Exception:
                    c.errors += 1
                    _logger.exception("meter %s failed on %s", meter.id, f.data.hex(" "))
                    continue
                if reply is not None:
                    replies.append((meter, reply))
        if f.broadcast:
            c.broadcasts += 1
            entry.result = "broadcast"
            self._append(entry)
            return
        if not replies:
            if silenced:
                c.faults_injected += 1
                entry.result = "fault:silent"
            else:
                c.no_reply += 1
                entry.result = "no-reply"
            self._append(entry)
            return
        if len(replies) > 1:  # several meters answered one wildcard: they collide
            c.collisions += 1
            entry.result = "collision"
            entry.meta["answering"] = [m.id for m, _ in replies]
            self._append(entry)
            return
        self._append(entry)
        meter, data = replies[0]
        self._schedule(meter, data, f, now)

    def _schedule(self, meter: SimMeter, data: bytes, f: WireFrame, now: float) -> None:
        faults = meter.faults
        kinds: list[str] = []
        delay = 0.0
        if faults.active(now):
            if faults.extra_delay > 0:
                delay = faults.extra_delay
                kinds.append("late")
            if faults.wrong_address:
                data = meter.with_wrong_address(data)
                kinds.append("wrong_address")
            if faults.bad_checksum:
                data = meter.with_bad_checksum(data)
                kinds.append("bad_checksum")
            if faults.garbage:
                data = self._rng.randbytes(len(data))
                kinds.append("garbage")
        if kinds:
            self.counters.faults_injected += 1
        result = "fault:" + "+".join(kinds) if kinds else "ok"
        meta: dict[str, Any] = {"meter": meter.id}
        if self.timing:
            start = f.end + meter.turnaround + delay
            meta["due_end"] = start + len(data) * self.char_time
            self._line_end = max(self._line_end, meta["due_end"])
        else:
            start = now
        address = meter.address_label()
        self._reply = _Reply(data, start, address, result, meta)
        self._pump(monotonic())

    # --- replies ----------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Write what of the pending reply has reached its line time."""
        reply = self._reply
        if reply is None:
            return
        total = len(reply.data)
        if self.timing:
            due = min(total, int((now - reply.start) / self.char_time + _EPS))
            chunk = max(1, int(CHUNK_SECONDS / self.char_time))
            if due < total and due - reply.sent < chunk:
                return
        else:
            due = total
        if due <= reply.sent:
            return
        data = reply.data[reply.sent : due]
        if due >= total:  # log first, so whoever reads the last byte finds the entry
            reply.sent = total
            self._finish(reply, monotonic() if self.timing else now, reply.result)
        try:
            written = os.write(self._master, data)
        except OSError:  # nobody reads the slave and its queue is full: the bytes are lost
            written = 0
        if written < len(data):
            reply.meta["lost"] = len(data) - written
        if due < total:
            reply.sent += len(data)

    def _finish(self, reply: _Reply, end: float, result: str) -> None:
        self._reply = None
        n = reply.sent
        c = self.counters
        c.bytes_out += n
        c.busy_seconds += n * self.char_time
        if result != "collision":
            c.transactions += 1
        if self.timing:
            self._line_end = max(self._line_end, end) if result != "collision" else self._line_end
        start = reply.start if self.timing else end
        self._append(BusLogEntry(start, end, "reply", reply.address, result, n, reply.meta))

    def _cancel_reply(self, result: str) -> None:
        reply = self._reply
        if reply is not None:
            reply.meta["unsent"] = len(reply.data) - reply.sent
            self._finish(reply, monotonic(), result)


def _replace_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` atomically; refuse to replace anything but a symlink."""
    if link.exists() and not link.is_symlink():
        raise PortError(f"{link} exists and is not a symlink: will not replace it")
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError as exc:
        raise PortError(f"cannot create the link {link} -> {target}: {exc}") from exc
