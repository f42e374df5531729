"""CBOR batch schema v1: round trips, hostile input, size, and the documented example."""

from __future__ import annotations

import contextlib
import random
import re
from datetime import date
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.batch import (
    Ack,
    Batch,
    HealthKind,
    HealthRecord,
    LedgerEntry,
    MeterEvent,
    TaskKind,
    TaskResult,
    TaskStatus,
    decode_ack,
    decode_batch,
    encode_ack,
    encode_batch,
    new_epoch,
)
from gateway.protocols.batch_columns import (
    INT_MAX,
    INT_MIN,
    Mode,
    decode_column,
    decode_dictionary,
    encode_column,
    encode_dictionary,
    pack_varints,
    unpack_varints,
    unzigzag,
    zigzag,
)
from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.quantities import FLAG_TIME_UNTRUSTED, Quantity, Reading

DOC = Path(__file__).resolve().parents[1] / "docs" / "batch-schema.md"


def golden(name: str) -> bytes:
    """The hex block after ``<!-- golden: name -->`` in the doc, comments stripped."""
    match = re.search(rf"<!-- golden: {name} -->\s*```\w*\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"no golden block {name!r} in {DOC}"
    hex_text = "".join(line.split("#")[0] for line in match.group(1).splitlines())
    return bytes.fromhex(hex_text.replace(" ", ""))


def four_values(meter: str, ts: int, wh: int, w: int, dv: int, ma: int) -> Reading:
    values = {
        Quantity.ENERGY_IMPORT: wh,
        Quantity.POWER: w,
        Quantity.VOLTAGE_A: dv,
        Quantity.CURRENT_A: ma,
    }
    return Reading(meter, ts, values)


DOC_BATCH = Batch(
    gateway_id="gw-01",
    epoch=0x1F2E3D4C5B6A7988,
    seq=42,
    readings=(
        four_values("240000000017", 1795000000238, 68769933, 1588, 2185, 7732),
        four_values("240000000034", 1795000000087, 52622574, 210, 2214, 1012),
        four_values("240000000017", 1795000015248, 68769939, 1459, 2186, 7108),
        four_values("240000000034", 1795000015005, 52622575, 209, 2211, 999),
    ),
)


def test_documented_example_decodes_and_encodes_byte_for_byte() -> None:
    data = golden("batch")
    assert len(data) == 111  # the doc says so
    assert decode_batch(data) == DOC_BATCH
    assert encode_batch(DOC_BATCH) == data


def test_documented_ack_example() -> None:
    data = bytes.fromhex("a3 00 07 01 18 29 02 82 18 2b 18 2d")
    assert "a3 00 07 01 18 29 02 82 18 2b 18 2d" in DOC.read_text()
    assert decode_ack(data) == Ack(7, 41, (43, 45))
    assert encode_ack(Ack(7, 41, (43, 45))) == data


# -- strategies --------------------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
meters = st.lists(texts, min_size=1, max_size=5, unique=True)
big = st.one_of(
    st.integers(-(2**53), 2**53), st.integers(-300, 300), st.sampled_from([INT_MIN, INT_MAX])
)
small_maps = st.dictionaries(
    st.one_of(texts, st.integers(-5, 5)), st.one_of(texts, big), max_size=3
)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    pool = draw(meters)
    meter = st.sampled_from(pool)
    quantities = st.dictionaries(st.sampled_from(list(Quantity)), big, max_size=5)
    readings = st.builds(Reading, meter, big, quantities, st.integers(0, 7))
    events = st.builds(MeterEvent, meter, big, big, small_maps)
    ledger = st.builds(LedgerEntry, big, texts, big, big, big, big, texts, big)
    days = st.dates(date(1, 1, 1), date(9999, 12, 31))
    tasks = st.builds(
        TaskResult,
        meter,
        st.sampled_from(TaskKind),
        days,
        st.sampled_from(TaskStatus),
        st.none() | big,
        quantities,
    )
    health = st.builds(
        HealthRecord, big, big, st.dictionaries(texts, st.one_of(texts, big), max_size=3)
    )
    return Batch(
        gateway_id=draw(texts),
        epoch=draw(st.integers(0, INT_MAX)),
        seq=draw(st.integers(0, INT_MAX)),
        readings=tuple(draw(st.lists(readings, max_size=12))),
        events=tuple(draw(st.lists(events, max_size=4))),
        ledger=tuple(draw(st.lists(ledger, max_size=4))),
        tasks=tuple(draw(st.lists(tasks, max_size=4))),
        health=tuple(draw(st.lists(health, max_size=3))),
    )


# -- round trips ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(batches())
def test_round_trip_is_exact(batch: Batch) -> None:
    decoded = decode_batch(encode_batch(batch))
    assert decoded == batch
    for original, back in zip(batch.readings, decoded.readings, strict=True):
        assert all(type(q) is Quantity for q in back.values)
        assert original.values == back.values


def test_empty_batch_is_only_the_header() -> None:
    data = encode_batch(Batch("g", 1, 1))
    assert cbor2.loads(data) == {0: 1, 1: "g", 2: 1, 3: 1}
    assert decode_batch(data) == Batch("g", 1, 1)


def test_every_record_kind_round_trips() -> None:
    batch = Batch(
        "gw-7",
        new_epoch(),
        1,
        readings=(Reading("m1", 10, {Quantity.POWER: -5}, FLAG_TIME_UNTRUSTED),),
        events=(MeterEvent("m2", 11, 301, {"balance": -12, 1: "x"}),),
        ledger=(LedgerEntry(9, "A-1", 12, 2, 1_000_000, 1_523_400, "T-1", 3),),
        tasks=(
            TaskResult("m1", TaskKind.DAILY_FREEZE, date(2026, 12, 31), TaskStatus.OK, 13, {}),
            TaskResult("m3", TaskKind.CURVE, date(2027, 1, 1), TaskStatus.FAILED, None),
        ),
        health=(HealthRecord(14, HealthKind.VERSIONS, {"sw": "0.1.0", "tariff": 3}),),
    )
    data = encode_batch(batch)
    assert cbor2.loads(data)[4] == [0, "m1", 1, "2", 1, "3"]  # readings, events, tasks order
    assert decode_batch(data) == batch


def test_list_records_are_kept_as_tuples() -> None:
    batch = Batch("g", 1, 1, readings=[Reading("m", 1)])  # type: ignore[arg-type]
    assert batch.readings == (Reading("m", 1),)
    assert decode_batch(encode_batch(batch)) == batch


def test_round_robin_meters_cost_one_integer() -> None:
    readings = tuple(Reading(f"m{i % 3}", i) for i in range(9))
    section = cbor2.loads(encode_batch(Batch("g", 1, 1, readings)))[5]
    assert section[0] == 3
    shuffled = tuple(Reading(f"m{i}", i) for i in (0, 1, 0, 2))
    section = cbor2.loads(encode_batch(Batch("g", 1, 1, shuffled)))[5]
    assert section[0] == [0, [0, 1, 0, 2]]
    assert decode_batch(encode_batch(Batch("g", 1, 1, shuffled))).readings == shuffled


def test_absent_quantities_use_a_presence_bitmap() -> None:
    readings = tuple(Reading("m", i, {Quantity.POWER: i} if i in (0, 9) else {}) for i in range(10))
    column = cbor2.loads(encode_batch(Batch("g", 1, 1, readings)))[5][3][Quantity.POWER]
    assert column[2] == bytes([0b0000_0001, 0b0000_0010])  # rows 0 and 9
    assert decode_batch(encode_batch(Batch("g", 1, 1, readings))).readings == readings


# -- size ----------------------------------------------------------------------------------


def synthetic_hour(seed: int) -> list[Reading]:
    """32 meters polled in turn every 15 s with 0-400 ms jitter, like the benchmark data."""
    rng = random.Random(seed)
    state = [
        [rng.randrange(10**6, 9 * 10**7), rng.randrange(150, 12000), rng.randrange(2170, 2230)]
        for _ in range(32)
    ]
    out = []
    for round_no in range(240):
        for index, (wh, w, dv) in enumerate(state):
            w = max(0, w + rng.randrange(-w // 10 - 1, w // 10 + 2))
            dv += rng.randrange(-3, 4)
            state[index] = [wh + w * 15 // 3600, w, dv]
            ma = w * 10**4 // dv * 100 // rng.randrange(90, 100)
            ts = 1_795_000_000_000 + round_no * 15_000 + rng.randrange(400)
            values = {
                Quantity.ENERGY_IMPORT: wh,
                Quantity.POWER: w,
                Quantity.VOLTAGE_A: dv,
                Quantity.CURRENT_A: ma,
            }
            out.append(Reading(f"2400000000{index:02d}", ts, values))
    return out


def test_at_most_ten_bytes_per_reading_in_batches_of_200() -> None:
    readings = synthetic_hour(7)
    total = 0
    for seq, start in enumerate(range(0, len(readings), 200), start=1):
        batch = Batch(
            "gw-bench-01", 0x1234_5678_9ABC_DEF0, seq, tuple(readings[start : start + 200])
        )
        data = encode_batch(batch)
        assert decode_batch(data) == batch
        total += len(data)
    assert total / len(readings) <= 10.0


# -- hostile input -------------------------------------------------------------------------


def decodes_or_refuses(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_batch(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    decodes_or_refuses(data)


@settings(max_examples=100, deadline=None)
@given(batches(), st.data())
def test_every_truncation_is_refused(batch: Batch, data: st.DataObject) -> None:
    encoded = encode_batch(batch)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(RemoteProtocolError):
        decode_batch(encoded[:cut])


@settings(max_examples=200, deadline=None)
@given(batches(), st.data())
def test_bit_flips_decode_or_raise_remote_protocol_error(batch: Batch, data: st.DataObject) -> None:
    encoded = bytearray(encode_batch(batch))
    for _ in range(data.draw(st.integers(1, 3))):
        bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
        encoded[bit // 8] ^= 1 << (bit % 8)
    decodes_or_refuses(bytes(encoded))


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({0: 2, 1: "g", 2: 1, 3: 1}, "schema version 2"),
        ({0: True, 1: "g", 2: 1, 3: 1}, "schema version True"),
        ({0: 1, 1: "g", 2: 1}, "key 3 missing"),
        ({0: 1, 1: "g", 2: -1, 3: 1}, "epoch: -1 out of range"),
        ({0: 1, 1: "g", 2: 1, 3: 1, 10: 0}, "unknown key 10"),
        (
            {0: 1, 1: "g", 2: 1, 3: 1, 4: [0, "m"], 5: {0: 2, 1: [0, [5, 6]]}},
            "reading meters: 2 out of range",
        ),
        (
            {0: 1, 1: "g", 2: 1, 3: 1, 4: [0, "m"], 5: {0: [0, [1]], 1: [0, [5]]}},
            "outside the dictionary",
        ),
        (
            {0: 1, 1: "g", 2: 1, 3: 1, 4: [0, "m"], 5: {0: 1, 1: [0, [5]], 3: {99: [0, [1]]}}},
            "unknown quantity 99",
        ),
        (
            {0: 1, 1: "g", 2: 1, 3: 1, 4: [0, "m"], 5: {0: 1, 1: [0, [5]], 3: {1: [0, [1, 2]]}}},
            "2 values for 1 rows",
        ),
        (
            {0: 1, 1: "g", 2: 1, 3: 1, 4: [0, "m"], 5: {0: 1, 1: [0, [5]], 3: {1: [0, [1.5]]}}},
            "expected an integer, got float",
        ),
        ({0: 1, 1: "g", 2: 1, 3: 1, 4: [3, "m"]}, "meter dictionary prefix: 3 out of range"),
        ({0: 1, 1: "g", 2: 1, 3: 1, 7: {0: [0, [1]]}}, "ledger: key 1 missing"),
        (
            {
                0: 1,
                1: "g",
                2: 1,
                3: 1,
                4: [0, "m"],
                8: {0: 1, 1: [0, [9]], 2: [0, [0]], 3: [0, [0]]},
            },
            "not a valid TaskKind",
        ),
        (
            {
                0: 1,
                1: "g",
                2: 1,
                3: 1,
                4: [0, "m"],
                8: {0: 1, 1: [0, [1]], 2: [0, [-(10**9)]], 3: [0, [0]]},
            },
            "ordinal must be >= 1",
        ),
    ],
)
def test_malformed_structures_are_refused(obj: object, reason: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(reason)):
        decode_batch(cbor2.dumps(obj))


def test_trailing_bytes_indefinite_lengths_and_duplicate_keys_are_refused() -> None:
    good = encode_batch(DOC_BATCH)
    with pytest.raises(RemoteProtocolError, match="after the CBOR item"):
        decode_batch(good + b"\x00")
    with pytest.raises(RemoteProtocolError):
        decode_batch(bytes.fromhex("bf 00 01 01 61 67 02 01 03 01 ff"))  # indefinite map
    with pytest.raises(RemoteProtocolError):
        decode_batch(bytes.fromhex("a5 00 01 01 61 67 02 01 03 01 03 02"))  # key 3 twice
    with pytest.raises(RemoteProtocolError):
        decode_batch("not bytes")  # type: ignore[arg-type]


def test_values_outside_64_bits_are_refused_both_ways() -> None:
    with pytest.raises(LocalProtocolError):
        encode_batch(Batch("g", 1, 1, (Reading("m", 2**63),)))
    with pytest.raises(LocalProtocolError):
        encode_batch(Batch("g", 1, 1, (Reading("m", 0, {Quantity.POWER: 1.5}),)))  # type: ignore[dict-item]
    with pytest.raises(LocalProtocolError):
        encode_batch(Batch("g", 1, 1, (Reading("m", 0, {99: 1}),)))  # type: ignore[dict-item]
    with pytest.raises(LocalProtocolError):
        encode_batch(Batch("g", 1, 1, (Reading("\ud800", 0),)))
    with pytest.raises(LocalProtocolError):
        encode_batch(Batch("g", 1, 1, (Reading("m" * 256, 0),)))
    with pytest.raises(LocalProtocolError):
        encode_batch(Batch("g", -1, 1))
    # a delta that lands outside the range on decode
    overflow = {0: 1, 1: "g", 2: 1, 3: 1, 4: [0, "m"], 5: {0: 1, 1: [1, [INT_MAX, 1]]}}
    with pytest.raises(RemoteProtocolError, match="out of the signed 64-bit range"):
        decode_batch(cbor2.dumps(overflow))


# -- columns and varints -------------------------------------------------------------------


@given(st.integers(-(2**64), 2**64))
def test_zigzag_and_varints_invert(value: int) -> None:
    assert unzigzag(zigzag(value)) == value
    assert zigzag(value) >= 0
    assert unpack_varints(pack_varints([value, 0, -1])) == [value, 0, -1]


def test_varint_golden_values() -> None:
    assert pack_varints([0, -1, 1, -64, 64, 300]) == bytes.fromhex("00 01 02 7f 8001 d804")


@pytest.mark.parametrize(
    "data",
    [b"\x80", b"\xff" * 11 + b"\x01", b"\x80\x00"],  # truncated, too long, not shortest
)
def test_bad_varints_are_refused(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        unpack_varints(data)


def test_column_picks_the_shortest_mode_and_form() -> None:
    ramp = list(range(1000, 1100))
    assert encode_column(ramp)[0] == Mode.ROW_DELTA
    interleaved = [
        v for pair in zip(range(0, 50), range(10**6, 10**6 + 50), strict=True) for v in pair
    ]
    groups = [i % 2 for i in range(100)]
    column = encode_column(interleaved, groups)
    assert column[0] == Mode.GROUP_DELTA
    assert decode_column(column, 100, "x", groups) == interleaved
    assert encode_column([1, 2, 3]) == [0, [1, 2, 3]]  # ties go to raw and the array


@given(st.lists(st.none() | st.integers(INT_MIN, INT_MAX), max_size=30), st.data())
def test_columns_round_trip(values: list[int | None], data: st.DataObject) -> None:
    groups = data.draw(st.lists(st.integers(0, 3), min_size=len(values), max_size=len(values)))
    column = encode_column(values, groups)
    assert decode_column(column, len(values), "x", groups) == values


def test_group_delta_needs_groups() -> None:
    with pytest.raises(RemoteProtocolError, match="per-group"):
        decode_column([2, [1]], 1, "x")


@given(st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=20), max_size=8))
def test_dictionary_round_trips(names: list[str]) -> None:
    assert decode_dictionary(encode_dictionary(names)) == names


# -- acknowledgements ----------------------------------------------------------------------


@given(st.integers(0, INT_MAX), st.integers(0, 10**6), st.lists(st.integers(1, 50), unique=True))
def test_ack_round_trips(epoch: int, highest: int, gaps: list[int]) -> None:
    ack = Ack(epoch, highest, tuple(sorted(highest + gap for gap in gaps)))
    assert decode_ack(encode_ack(ack)) == ack


def test_ack_refuses_missing_below_the_highest_or_out_of_order() -> None:
    with pytest.raises(LocalProtocolError):
        encode_ack(Ack(1, 10, (9,)))
    with pytest.raises(RemoteProtocolError):
        decode_ack(cbor2.dumps({0: 1, 1: 10, 2: [12, 11]}))
    with pytest.raises(RemoteProtocolError):
        decode_ack(cbor2.dumps({0: 1}))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_ack_random_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_ack(data)


def test_new_epoch_is_random_and_in_range() -> None:
    epochs = {new_epoch() for _ in range(20)}
    assert len(epochs) == 20
    assert all(1 <= epoch <= INT_MAX for epoch in epochs)
