"""Stream framer: bytes from a serial line in, DL/T 645 events out.

:meth:`Framer.feed` never raises.  It skips FE wake-up bytes and garbage, hunts for a
``68 A0..A5 68`` header, drops a frame with a bad checksum or a missing end byte and
resynchronises one byte after its start, and abandons a frame that was cut short as
soon as a complete frame is found behind it (so a reply behind line noise is not held
back; the price: a long frame whose data happens to carry a complete valid frame is
cut there when it arrives in pieces).  A well-formed frame whose data does not fit its
control code is dropped too.  :class:`FramerStats` counts all of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.protocols.dlt645 import _construct as _c
from gateway.protocols.dlt645.frames import Event, RawFrame, decode_raw
from gateway.protocols.errors import RemoteProtocolError

__all__ = ["Framer", "FramerStats"]

_START = 0x68
_END = 0x16
_FE = 0xFE
_HEADER = 10
"""68, six address bytes, 68, C, L."""
_MAX_FRAME = _HEADER + 255 + 2


@dataclass(slots=True)
class FramerStats:
    """What a framer saw.  Every byte fed ends up in exactly one of ``frame_bytes``,
    ``preamble_bytes``, ``dropped_bytes`` or the framer's pending buffer."""

    frames: int = 0
    """Well-formed frames found (:meth:`~Framer.feed` returns those not ``undecodable``)."""
    frame_bytes: int = 0
    preamble_bytes: int = 0
    """FE bytes skipped while hunting for a frame."""
    dropped_bytes: int = 0
    """Other bytes skipped: garbage, and what was left of bad or truncated frames."""
    bad_checksums: int = 0
    bad_end_bytes: int = 0
    truncated: int = 0
    """Frames abandoned: a complete frame started inside them, or :meth:`~Framer.flush`."""
    undecodable: int = 0
    """Frames with a good checksum but a non-BCD address or data that does not fit
    their control code (counted in ``frames`` too)."""
    last_error: str | None = None
    """Why the last frame was dropped (for a technician's display)."""


class Framer:
    """Incremental framer for one serial line; not thread-safe (one per bus)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.stats = FramerStats()

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        """Add received bytes; return the events of every frame completed by them."""
        events: list[Event] = []
        for raw in self.feed_raw(data):
            try:
                events.append(decode_raw(raw))
            except RemoteProtocolError as exc:
                self.stats.undecodable += 1
                self.stats.last_error = str(exc)
        return events

    def feed_raw(self, data: bytes) -> list[RawFrame]:
        """Like :meth:`feed`, but return envelopes without decoding their data."""
        self._buf += data
        frames: list[RawFrame] = []
        while True:
            raw = self._next()
            if raw is None:
                return frames
            frames.append(raw)

    def flush(self) -> None:
        """Give up on the pending bytes (the line went quiet): count them as dropped."""
        if self._buf:
            if self._buf.find(_START) >= 0:
                self.stats.truncated += 1
                self.stats.last_error = "frame truncated"
            self._skip(len(self._buf))

    def _skip(self, n: int) -> None:
        chunk = self._buf[:n]
        fe = chunk.count(_FE)
        self.stats.preamble_bytes += fe
        self.stats.dropped_bytes += n - fe
        del self._buf[:n]

    def _check(self, i: int) -> tuple[int, str | None] | None:
        """Frame at ``i``: None if incomplete, else (length, None) or (0, why it is bad)."""
        buf = self._buf
        if len(buf) < i + _HEADER:
            return None
        if buf[i + 7] != _START:
            return 0, "no second 68"
        end = i + _HEADER + buf[i + 9]
        if len(buf) < end + 2:
            return None
        if _c.checksum(buf[i:end]) != buf[end]:
            return 0, "bad checksum"
        if buf[end + 1] != _END:
            return 0, "no end byte 16"
        return end + 2 - i, None

    def _next(self) -> RawFrame | None:
        buf = self._buf
        while True:
            start = buf.find(_START)
            if start < 0:
                self._skip(len(buf))
                return None
            if start:
                self._skip(start)
            checked = self._check(0)
            if checked is None:
                later = self._complete_frame_after(1)
                if later is None:
                    return None
                self.stats.truncated += 1
                self.stats.last_error = "frame truncated"
                self._skip(later)
                continue
            length, why = checked
            if why is not None:
                if why == "bad checksum":
                    self.stats.bad_checksums += 1
                    self.stats.last_error = why
                elif why == "no end byte 16":
                    self.stats.bad_end_bytes += 1
                    self.stats.last_error = why
                self._skip(1)
                continue
            frame = bytes(buf[:length])
            del buf[:length]
            self.stats.frames += 1
            self.stats.frame_bytes += length
            return RawFrame(_c.bytes_to_hex_le(frame[1:7]), frame[8], _c.minus33(frame[_HEADER:-2]))

    def _complete_frame_after(self, pos: int) -> int | None:
        """Start of the first complete, valid frame at or after ``pos`` (a truncated
        frame before it is then abandoned)."""
        buf = self._buf
        limit = min(len(buf), _MAX_FRAME)
        while True:
            i = buf.find(_START, pos, limit)
            if i < 0:
                return None
            checked = self._check(i)
            if checked is not None and checked[1] is None:
                return i
            pos = i + 1
