"""The read planner: merges gaps only when cheaper, respects max registers, optimal."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.modbus import DataType, RegisterSpec
from gateway.protocols.modbus_plan import (
    Plan,
    plan_one_per_register,
    plan_reads,
    read_time,
)
from gateway.protocols.quantities import UNITS, Quantity

Q = list(Quantity)


def reg(address: int, words: int = 2, index: int = 0) -> RegisterSpec:
    """A register of ``words`` at ``address``; ``index`` picks a distinct quantity."""
    type_ = DataType.FLOAT32 if words == 2 else DataType.UINT16
    quantity = Q[index]
    return RegisterSpec(quantity, address, type_, UNITS[quantity])  # meter unit = our unit


def spans(plan: Plan) -> list[tuple[int, int]]:
    return [(r.start, r.count) for r in plan.requests]


def test_read_time_is_the_line_transaction() -> None:
    # 9600 8N1: 10 bits a char, 1.0417 ms; a read of 2 registers is 8 + 9 = 17 chars
    # = 17.708 ms, + 20 ms turnaround + t3.5 (35 bits / 9600 = 3.646 ms) = 41.354 ms
    line = LineSettings(baud=9600, parity="N")
    assert read_time(line, 2, 0.020) == pytest.approx(0.017708333 + 0.020 + 0.003645833)


@pytest.mark.parametrize(
    ("gap", "baud", "requests"),
    [
        # 2400 8E1: a char is 11/2400 s = 4.583 ms.  A gap register costs 2 chars =
        # 9.167 ms; another transaction costs 13 chars (59.58 ms) + 20 ms turnaround +
        # t3.5 (38.5 bits = 16.04 ms) = 95.63 ms: merge iff gap < 10.43 registers.
        (8, 2400, 1),
        (16, 2400, 2),
        # 19200 8E1: a char is 0.5729 ms, a gap register 1.146 ms; a transaction
        # 7.448 ms + 20 ms + t3.5 (38.5 bits = 2.005 ms) = 29.45 ms: merge iff gap < 25.7.
        (16, 19200, 1),
        (30, 19200, 2),
    ],
)
def test_gap_is_read_only_when_cheaper(gap: int, baud: int, requests: int) -> None:
    registers = [reg(0, 2, 0), reg(2 + gap, 2, 1)]
    line = LineSettings(baud=baud, parity="E")
    plan = plan_reads(registers, line, turnaround=0.020)
    assert len(plan.requests) == requests
    if requests == 1:
        assert spans(plan) == [(0, 4 + gap)]
    else:
        assert spans(plan) == [(0, 2), (2 + gap, 2)]
    assert plan.total_time == pytest.approx(sum(r.time for r in plan.requests))


def test_max_registers_splits_a_contiguous_block() -> None:
    # ten contiguous uint16 registers, at most 4 a request: 3 requests are needed
    registers = [reg(a, 1, a) for a in range(10)]
    plan = plan_reads(registers, LineSettings(9600, parity="N"), turnaround=0.02, max_registers=4)
    assert len(plan.requests) == 3
    assert all(r.count <= 4 for r in plan.requests)
    assert sum(r.count for r in plan.requests) == 10
    # a 32-bit value is never split across two requests
    wide = [reg(0, 2, 0), reg(2, 2, 1), reg(4, 2, 2)]
    plan = plan_reads(wide, LineSettings(9600, parity="N"), turnaround=0.02, max_registers=3)
    assert spans(plan) == [(0, 2), (2, 2), (4, 2)]


def test_planner_refuses_overlap_and_too_wide() -> None:
    line = LineSettings()
    with pytest.raises(LocalProtocolError, match="overlap"):
        plan_reads([reg(0, 2, 0), reg(1, 2, 1)], line, turnaround=0.0)
    with pytest.raises(LocalProtocolError, match="wider"):
        plan_reads([reg(0, 2, 0)], line, turnaround=0.0, max_registers=1)


def test_plan_beats_one_per_register_and_decodes() -> None:
    # SDM120 at 9600 8N1, 20 ms: gaps of 4 registers are read, the 38-register gap
    # between 0x0020 and 0x0046 is not: [0x0000 x32] and [0x0046 x6].
    from gateway.drivers.profiles import get

    sdm = get("sdm120")
    line = LineSettings(9600, parity="N")
    plan = plan_reads(sdm.registers, line, turnaround=0.02, max_registers=sdm.max_registers)
    naive = plan_one_per_register(sdm.registers, line, turnaround=0.02)
    assert spans(plan) == [(0x0000, 32), (0x0046, 6)]
    assert len(naive.requests) == 7
    assert plan.total_time < naive.total_time
    first = [0] * 32
    first[0:2] = [0x4366, 0x199A]  # 230.1 V -> 2301 dV
    second = [0x4248, 0x0A3D, 0x4640, 0xE6AE, 0, 0]  # 50.01 Hz, 12345.67 kWh, 0 kWh
    values = plan.decode([first, second], ct=2)
    assert values[Quantity.VOLTAGE_A] == 2301
    assert values[Quantity.FREQUENCY] == 5001
    assert values[Quantity.ENERGY_IMPORT] == 24_691_340  # 12345669.921875 Wh x 2, rounded
    assert values[Quantity.ENERGY_EXPORT] == 0
    assert values[Quantity.POWER] == 0
    with pytest.raises(RemoteProtocolError):
        plan.decode([first])
    with pytest.raises(RemoteProtocolError):
        plan.decode([first, second[:4]])


def test_requests_carry_the_profile_function_code() -> None:
    plan = plan_reads([reg(0x2000, 2, 0)], LineSettings(), turnaround=0.0)
    request = plan.requests[0].request(unit=5, function_code=3)
    assert (request.unit, request.function_code, request.address, request.count) == (
        5,
        3,
        0x2000,
        2,
    )


# --- optimality against brute force --------------------------------------------------


def set_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest):
        yield [[first], *partition]
        for i in range(len(partition)):
            yield [*partition[:i], [first, *partition[i]], *partition[i + 1 :]]


def brute_force(
    registers: list[RegisterSpec], line: LineSettings, turnaround: float, max_registers: int
) -> float:
    """Cheapest cost over every assignment of registers to requests (any grouping)."""
    best = math.inf
    for partition in set_partitions(list(range(len(registers)))):
        total = 0.0
        for group in partition:
            start = min(registers[i].address for i in group)
            end = max(registers[i].end for i in group)
            if end - start > max_registers:
                total = math.inf
                break
            total += read_time(line, end - start, turnaround)
        best = min(best, total)
    return best


@st.composite
def layouts(draw: st.DrawFn) -> list[RegisterSpec]:
    n = draw(st.integers(1, 6))
    address = draw(st.integers(0, 5))
    registers = []
    for index in range(n):
        words = draw(st.sampled_from([1, 2]))
        registers.append(reg(address, words, index))
        address += words + draw(st.integers(0, 14))
    return draw(st.permutations(registers))


@given(
    layouts(),
    st.sampled_from([1200, 2400, 9600, 19200, 38400]),
    st.sampled_from(["N", "E"]),
    st.sampled_from([0.0, 0.005, 0.02, 0.1]),
    st.integers(2, 40),
)
@settings(max_examples=150, deadline=None)
def test_planner_is_optimal(
    registers: list[RegisterSpec], baud: int, parity: str, turnaround: float, max_registers: int
) -> None:
    line = LineSettings(baud=baud, parity=parity)
    plan = plan_reads(registers, line, turnaround=turnaround, max_registers=max_registers)
    expected = brute_force(registers, line, turnaround, max_registers)
    assert plan.total_time == pytest.approx(expected, rel=1e-12)
    # and the plan is a valid one: each register whole in exactly one request
    served = [r for read in plan.requests for r in read.registers]
    assert sorted(served, key=lambda r: r.address) == sorted(registers, key=lambda r: r.address)
    for read in plan.requests:
        assert read.count <= max_registers
        for r in read.registers:
            assert read.start <= r.address and r.end <= read.start + read.count
    assert plan.total_time <= plan_one_per_register(
        registers, line, turnaround=turnaround
    ).total_time * (1 + 1e-12)


def test_brute_force_can_tell_a_worse_plan() -> None:
    # guard against a vacuous oracle: two far registers read as one block cost more
    line = LineSettings(2400)
    registers = [reg(0, 2, 0), reg(60, 2, 1)]
    merged = read_time(line, 62, 0.0)
    assert brute_force(registers, line, 0.0, 125) < merged
