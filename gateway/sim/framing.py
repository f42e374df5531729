"""Cutting the master's byte stream into request frames, with each frame's line time.

The bus hands every chunk it reads from the pty to a splitter together with the
line time of the chunk's first byte; byte ``i`` of the chunk occupies the line from
``start + i x char_time``.  A splitter returns :class:`WireFrame` objects: the
frame's bytes as a meter sees them, its line span, its address label and whether it
is a well-formed frame or garbage.

- Modbus RTU (:class:`ModbusSplitter`): a frame's length follows from its function
  code (pymodbus's PDU table, as :func:`gateway.protocols.modbus.decode_request`
  uses); a bad CRC or an unknown function code makes the bytes garbage.
- DL/T 645 (:class:`Dlt645Splitter`): :class:`gateway.protocols.dlt645.Framer`,
  fed one byte at a time so each frame's end is known exactly.  The frame's line
  span includes its FE wake-up bytes and any noise since the previous frame.

Bytes of an incomplete frame are given up by :meth:`flush` (the bus calls it when
the line has been quiet for a while) and come out as one garbage frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.protocols.dlt645 import BROADCAST_ADDRESS, Framer, build_raw

if TYPE_CHECKING:
    from pymodbus.pdu import DecodePDU

__all__ = ["Dlt645Splitter", "ModbusSplitter", "Splitter", "WireFrame", "make_splitter"]


@dataclass(slots=True)
class WireFrame:
    """One request on the line (or garbage, when ``valid`` is false)."""

    data: bytes
    """The frame as a meter sees it (DL/T 645: without wake-up bytes and noise)."""
    start: float
    """Line time (monotonic seconds) of its first byte, wake-up bytes included."""
    end: float
    """Line time at which its last byte has been sent."""
    nbytes: int
    """Bytes it occupied on the line (preamble and noise included)."""
    valid: bool
    address: str | None = None
    """Modbus: the unit id in decimal; DL/T 645: the 12-character address."""
    broadcast: bool = False
    """Modbus unit 0 or DL/T 645 99..99: every meter acts, none answers."""
    wildcard: bool = False
    """DL/T 645 address with AA bytes: every meter looks, the matching one answers."""


class Splitter(Protocol):
    """Bytes with line times in, frames out."""

    def feed(self, chunk: bytes, start: float, char_time: float) -> list[WireFrame]: ...

    def flush(self) -> WireFrame | None: ...

    @property
    def pending(self) -> int: ...


@functools.cache
def _server_decoder() -> DecodePDU:
    from pymodbus.pdu import DecodePDU

    return DecodePDU(True)


def _crc_ok(frame: bytes) -> bool:
    from pymodbus.framer import FramerRTU

    return bool(FramerRTU.check_CRC(frame[:-2], int.from_bytes(frame[-2:], "big")))


class ModbusSplitter:
    """Modbus RTU requests by length from the function code."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._times: list[float] = []
        self._char_time = 0.0
        _server_decoder()  # load pymodbus now, not on the first request
        _crc_ok(b"\x00\x00\x00\x00")

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, chunk: bytes, start: float, char_time: float) -> list[WireFrame]:
        self._buf += chunk
        self._times.extend(start + i * char_time for i in range(len(chunk)))
        self._char_time = char_time
        out: list[WireFrame] = []
        while len(self._buf) >= 2:
            size = self._size()
            if size is None:
                break
            if size < 0:  # unknown function code: all we hold is noise
                out.append(self._take(len(self._buf), valid=False))
                break
            frame = self._take(size, valid=True)
            frame.valid = _crc_ok(frame.data)
            if frame.valid:
                unit = frame.data[0]
                frame.address = str(unit)
                frame.broadcast = unit == 0
            out.append(frame)
        return out

    def _size(self) -> int | None:
        """Length of the frame at the head, None while too short, -1 if unknown."""
        data = bytes(self._buf)
        try:
            pdu_class = _server_decoder().lookupPduClass(data)
            if pdu_class is None:
                return -1
            size = int(pdu_class.calculateRtuFrameSize(data))
        except IndexError:
            return None
        except Exception:  # pymodbus: a PDU class that cannot size itself
            return -1
        if size <= 0 or len(self._buf) < size:
            return None
        return size

    def _take(self, n: int, *, valid: bool) -> WireFrame:
        data = bytes(self._buf[:n])
        start = self._times[0]
        end = self._times[n - 1] + self._char_time
        del self._buf[:n]
        del self._times[:n]
        return WireFrame(data, start, end, n, valid)

    def flush(self) -> WireFrame | None:
        if not self._buf:
            return None
        return self._take(len(self._buf), valid=False)


class Dlt645Splitter:
    """DL/T 645 requests through the codec's own framer."""

    def __init__(self) -> None:
        self._framer = Framer()
        self._span_start: float | None = None
        self._span_bytes = 0
        self._last_end = 0.0

    @property
    def pending(self) -> int:
        return self._span_bytes

    def feed(self, chunk: bytes, start: float, char_time: float) -> list[WireFrame]:
        out: list[WireFrame] = []
        feed_raw = self._framer.feed_raw
        for i in range(len(chunk)):
            if self._span_start is None:
                self._span_start = start + i * char_time
            self._span_bytes += 1
            self._last_end = start + (i + 1) * char_time
            raws = feed_raw(chunk[i : i + 1])
            if not raws:
                continue
            raw = raws[-1]
            address = raw.address.upper()
            out.append(
                WireFrame(
                    build_raw(raw),
                    self._span_start,
                    self._last_end,
                    self._span_bytes,
                    True,
                    address,
                    broadcast=address == BROADCAST_ADDRESS,
                    wildcard="A" in address,
                )
            )
            self._span_start = None
            self._span_bytes = 0
        return out

    def flush(self) -> WireFrame | None:
        if not self._span_bytes or self._span_start is None:
            return None
        self._framer.flush()
        frame = WireFrame(b"", self._span_start, self._last_end, self._span_bytes, False)
        self._span_start = None
        self._span_bytes = 0
        return frame


def make_splitter(protocol: str) -> Splitter:
    """The splitter of ``protocol`` (``modbus`` or ``dlt645``)."""
    if protocol == "modbus":
        return ModbusSplitter()
    if protocol == "dlt645":
        return Dlt645Splitter()
    raise ValueError(f"unknown protocol {protocol!r}")
