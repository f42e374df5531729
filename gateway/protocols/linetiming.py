"""The physical limit of an RS-485 line (domain.md, "Line timing").

One transaction costs (request bytes + reply bytes) x bits per character / baud,
plus the silent gap the protocol requires between frames, plus the meter's
turnaround.  No gateway can poll faster; planners minimise it and benchmarks state
their efficiency against it.  All times are in seconds (floats: these are physical
durations, not money or energy).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LineSettings", "bits_per_char", "modbus_silent_gap"]

_PARITY_BITS = {"N": 0, "E": 1, "O": 1}


def bits_per_char(data_bits: int = 8, parity: str = "N", stop_bits: int = 1) -> int:
    """Start bit + data bits + parity bit (if any) + stop bits: 10 for 8N1, 11 for 8E1."""
    if parity not in _PARITY_BITS:
        raise ValueError(f"parity must be N, E or O, not {parity!r}")
    return 1 + data_bits + _PARITY_BITS[parity] + stop_bits


def modbus_silent_gap(baud: int, char_bits: int) -> float:
    """Modbus RTU t3.5: 3.5 characters, fixed at 1.75 ms above 19200 baud."""
    if baud > 19200:
        return 0.00175
    return 3.5 * char_bits / baud


@dataclass(frozen=True, slots=True)
class LineSettings:
    """A serial line's framing and speed."""

    baud: int = 2400
    data_bits: int = 8
    parity: str = "E"
    stop_bits: int = 1

    @property
    def char_bits(self) -> int:
        return bits_per_char(self.data_bits, self.parity, self.stop_bits)

    @property
    def char_time(self) -> float:
        """Seconds one character occupies the line."""
        return self.char_bits / self.baud

    def wire_time(self, nbytes: int) -> float:
        """Seconds ``nbytes`` back-to-back occupy the line."""
        return nbytes * self.char_time

    @property
    def modbus_gap(self) -> float:
        return modbus_silent_gap(self.baud, self.char_bits)

    def transaction_time(
        self, request_bytes: int, reply_bytes: int, turnaround: float, gap: float | None = None
    ) -> float:
        """Least time one request/reply exchange holds the bus.

        ``gap`` is the silent interval required before the next frame may start
        (default: Modbus t3.5).  The reply starts ``turnaround`` after the request's
        last byte.
        """
        silent = self.modbus_gap if gap is None else gap
        return self.wire_time(request_bytes + reply_bytes) + turnaround + silent
