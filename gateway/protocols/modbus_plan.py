"""The cheapest set of Modbus read requests for one poll, in bus time (pure).

Reading a gap between two wanted registers costs 2 bytes per gap register on the
reply; a separate request costs a whole transaction (8 request bytes, 5 reply bytes
of overhead, the meter's turnaround and the t3.5 silence).  :func:`plan_reads`
weighs the two exactly with :meth:`LineSettings.transaction_time`.

Optimality.  Take any set of requests that reads every wanted register whole, and
give each register to one request that covers it.  Shrinking a request to the span
of its registers never costs more (cost grows with the count).  If a request's
registers are not consecutive in address order, another request's register lies
inside its span: hand that register over, which never makes the other request
longer, and drop a request left empty.  So some optimum reads consecutive runs of
the sorted registers, each run as one request from its first to its last register.
:func:`plan_reads` finds the best such partition with a dynamic programme over the
sorted registers, ``best[j] = min_i best[i] + cost(run i..j-1)``, in O(n^2).  The
tests check it against brute force over every assignment of registers to requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise

from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.modbus import (
    READ_REQUEST_SIZE,
    ReadRequest,
    RegisterSpec,
    WordOrder,
    decode_register,
    read_reply_size,
)
from gateway.protocols.quantities import Quantity

__all__ = ["Plan", "PlannedRead", "plan_one_per_register", "plan_reads", "read_time"]


@dataclass(frozen=True, slots=True)
class PlannedRead:
    """One read request: ``count`` registers from ``start``, serving ``registers``."""

    start: int
    count: int
    registers: tuple[RegisterSpec, ...]
    time: float
    """Least bus time of this transaction, seconds."""

    def request(self, unit: int, function_code: int) -> ReadRequest:
        """The request to send to meter ``unit``."""
        return ReadRequest(unit, function_code, self.start, self.count)

    def words(self, registers: Sequence[int], spec: RegisterSpec) -> list[int]:
        """The words of ``spec`` inside this request's reply ``registers``."""
        offset = spec.address - self.start
        return list(registers[offset : offset + spec.words])


@dataclass(frozen=True, slots=True)
class Plan:
    """Requests for one poll, in address order, and their total bus time."""

    requests: tuple[PlannedRead, ...]
    total_time: float
    """Sum of the requests' least bus times, seconds."""

    @property
    def registers_read(self) -> int:
        """Registers transferred, gaps included."""
        return sum(r.count for r in self.requests)

    def decode(
        self,
        replies: Sequence[Sequence[int]],
        word_order: WordOrder = WordOrder.BIG,
        *,
        ct: int | Fraction = 1,
        pt: int | Fraction = 1,
    ) -> dict[Quantity, int]:
        """Every planned quantity from the replies' registers (one reply per request)."""
        if len(replies) != len(self.requests):
            raise RemoteProtocolError(f"{len(replies)} replies for {len(self.requests)} requests")
        values: dict[Quantity, int] = {}
        for read, registers in zip(self.requests, replies, strict=True):
            if len(registers) != read.count:
                got = len(registers)
                raise RemoteProtocolError(
                    f"read at 0x{read.start:04X} wanted {read.count} registers, got {got}"
                )
            for spec in read.registers:
                words = read.words(registers, spec)
                values[spec.quantity] = decode_register(spec, words, word_order, ct=ct, pt=pt)
        return values


def read_time(line: LineSettings, count: int, turnaround: float) -> float:
    """Least bus time of one read of ``count`` registers, seconds."""
    return line.transaction_time(READ_REQUEST_SIZE, read_reply_size(count), turnaround)


def _sorted(registers: Sequence[RegisterSpec], max_registers: int) -> list[RegisterSpec]:
    if not 1 <= max_registers <= 125:
        raise LocalProtocolError(f"max_registers must be 1..125: {max_registers}")
    ordered = sorted(registers, key=lambda r: r.address)
    for a, b in pairwise(ordered):
        if b.address < a.end:
            raise LocalProtocolError(
                f"registers overlap at 0x{a.address:04X} and 0x{b.address:04X}"
            )
    for reg in ordered:
        if reg.words > max_registers:
            raise LocalProtocolError(f"register at 0x{reg.address:04X} wider than max_registers")
    return ordered


def plan_reads(
    registers: Sequence[RegisterSpec],
    line: LineSettings,
    *,
    turnaround: float,
    max_registers: int = 125,
) -> Plan:
    """The read requests that fetch ``registers`` in the least bus time.

    ``turnaround`` is the meter's reply delay in seconds; no request asks for more
    than ``max_registers``.  Ties go to fewer registers read.
    """
    ordered = _sorted(registers, max_registers)
    n = len(ordered)
    inf = float("inf")
    # best[j]: (time, registers read) of the best plan for ordered[:j]; back[j]: its last run start.
    best: list[tuple[float, int]] = [(0.0, 0)] + [(inf, 0)] * n
    back = [0] * (n + 1)
    for j in range(1, n + 1):
        end = ordered[j - 1].end
        for i in range(j - 1, -1, -1):
            count = end - ordered[i].address
            if count > max_registers:
                break  # earlier starts only make the run longer
            time, read = best[i]
            candidate = (time + read_time(line, count, turnaround), read + count)
            if candidate < best[j]:
                best[j], back[j] = candidate, i
    runs: list[PlannedRead] = []
    j = n
    while j > 0:
        i = back[j]
        start, count = ordered[i].address, ordered[j - 1].end - ordered[i].address
        runs.append(
            PlannedRead(start, count, tuple(ordered[i:j]), read_time(line, count, turnaround))
        )
        j = i
    runs.reverse()
    return Plan(tuple(runs), sum(r.time for r in runs))


def plan_one_per_register(
    registers: Sequence[RegisterSpec], line: LineSettings, *, turnaround: float
) -> Plan:
    """The naive plan, one request per register: the baseline :func:`plan_reads` beats."""
    ordered = _sorted(registers, 125)
    runs = tuple(
        PlannedRead(r.address, r.words, (r,), read_time(line, r.words, turnaround)) for r in ordered
    )
    return Plan(runs, sum(r.time for r in runs))
