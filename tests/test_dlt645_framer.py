"""The stream framer: preamble, garbage, bad checksums, truncated frames; never raises."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.dlt645 import (
    Event,
    Framer,
    ReadAddressRequest,
    ReadReply,
    ReadRequest,
    encode,
)

METER = "123456789012"
# Worked examples of domain.md.
READ = bytes.fromhex("68 12 90 78 56 34 12 68 11 04 33 33 33 33 67 16")
REPLY = bytes.fromhex("68 12 90 78 56 34 12 68 91 08 33 33 33 33 9A 78 56 34 87 16")
VOLTS = bytes.fromhex("68 12 90 78 56 34 12 68 91 06 33 34 34 35 34 55 76 16")
WHO = bytes.fromhex("68 AA AA AA AA AA AA 68 13 00 DF 16")
READ_EVENT = ReadRequest(METER, 0)
REPLY_EVENT = ReadReply(METER, 0, bytes.fromhex("67452301"))
VOLTS_EVENT = ReadReply(METER, 0x02010100, bytes.fromhex("0122"))


def bytewise(framer: Framer, data: bytes) -> list[Event]:
    out: list[Event] = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    return out


def accounted(framer: Framer) -> int:
    s = framer.stats
    return s.frame_bytes + s.preamble_bytes + s.dropped_bytes + framer.pending


def test_fe_preamble_is_skipped_and_counted() -> None:
    framer = Framer()
    assert framer.feed(b"\xfe\xfe\xfe\xfe" + REPLY) == [REPLY_EVENT]
    assert framer.stats.preamble_bytes == 4
    assert framer.stats.dropped_bytes == 0
    assert framer.stats.frames == 1 and framer.pending == 0


def test_two_frames_in_one_chunk_and_one_frame_in_pieces() -> None:
    framer = Framer()
    assert framer.feed(READ + REPLY) == [READ_EVENT, REPLY_EVENT]
    assert framer.feed(VOLTS[:5]) == []
    assert framer.pending == 5
    assert framer.feed(VOLTS[5:]) == [VOLTS_EVENT]


def test_garbage_before_between_and_after_frames() -> None:
    framer = Framer()
    stream = b"\x00\x11\x68\x22" + REPLY + b"\x16\x68\x68" + VOLTS + b"\x33"
    assert framer.feed(stream) == [REPLY_EVENT, VOLTS_EVENT]
    framer.flush()
    assert framer.stats.dropped_bytes == 4 + 3 + 1
    assert accounted(framer) == len(stream)


def test_bad_checksum_is_dropped_and_the_next_frame_found() -> None:
    bad = bytearray(REPLY)
    bad[-2] ^= 0x01  # CS off by one bit
    framer = Framer()
    assert framer.feed(bytes(bad) + VOLTS) == [VOLTS_EVENT]
    assert framer.stats.bad_checksums == 1
    assert framer.stats.dropped_bytes == len(REPLY)
    assert framer.stats.last_error == "bad checksum"


def test_missing_end_byte_is_dropped() -> None:
    bad = REPLY[:-1] + b"\x17"
    framer = Framer()
    assert framer.feed(bad + VOLTS) == [VOLTS_EVENT]
    assert framer.stats.bad_end_bytes == 1


def test_garbage_inside_a_frame_loses_only_that_frame() -> None:
    corrupted = REPLY[:12] + b"\x55" + REPLY[12:]  # a byte too many inside the data
    framer = Framer()
    assert framer.feed(READ + corrupted + VOLTS) == [READ_EVENT, VOLTS_EVENT]
    assert framer.stats.bad_checksums + framer.stats.bad_end_bytes == 1


def test_truncated_frame_is_abandoned_as_soon_as_a_whole_frame_follows() -> None:
    framer = Framer()
    # A reply cut after its L byte, which promises 0x08 bytes; then a long frame's
    # worth of promise: L = FF would otherwise hold the volts reply back.
    cut = bytes.fromhex("68 12 90 78 56 34 12 68 91 FF 33 33")
    events = bytewise(framer, cut + VOLTS)
    assert events == [VOLTS_EVENT]
    assert framer.stats.truncated == 1
    assert framer.pending == 0
    assert accounted(framer) == len(cut + VOLTS)


def test_truncated_short_frame_then_a_frame_resynchronises() -> None:
    framer = Framer()
    cut = REPLY[:14]  # header and part of the DI
    assert framer.feed(cut + WHO + READ) == [ReadAddressRequest(), READ_EVENT]
    assert framer.stats.bad_checksums + framer.stats.truncated >= 1


def test_flush_gives_up_on_a_pending_frame() -> None:
    framer = Framer()
    assert framer.feed(REPLY[:9]) == []
    framer.flush()
    assert framer.pending == 0
    assert framer.stats.truncated == 1
    assert framer.feed(REPLY) == [REPLY_EVENT]


def test_well_formed_frame_with_bad_content_is_counted_not_returned() -> None:
    # read-address reply (93) with 1 data byte instead of 6; valid checksum
    bad = bytes.fromhex("68 12 90 78 56 34 12 68 93 01 33 4D 16")
    framer = Framer()
    assert framer.feed(bad + READ) == [READ_EVENT]
    assert framer.stats.undecodable == 1
    assert framer.stats.frames == 2
    assert "6 data bytes" in (framer.stats.last_error or "")


def test_feed_raw_returns_envelopes() -> None:
    framer = Framer()
    (raw,) = framer.feed_raw(b"\xfe\xfe" + REPLY)
    assert (raw.address, raw.control, raw.data) == (METER, 0x91, bytes.fromhex("0000000067452301"))


# --- properties ---------------------------------------------------------------------

frames = st.sampled_from([READ, REPLY, VOLTS, WHO]) | st.builds(
    lambda di, data: encode(ReadReply(METER, di, data)),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=40),
)
garbage = st.binary(max_size=12)
pieces = st.lists(
    st.tuples(st.integers(0, 4).map(lambda n: b"\xfe" * n), frames, garbage), max_size=6
)


@given(pieces)
def test_frames_survive_preamble_and_garbage_whole_or_bytewise(
    parts: list[tuple[bytes, bytes, bytes]],
) -> None:
    stream = b"".join(p + f + g for p, f, g in parts)
    whole = Framer()
    got_whole = whole.feed(stream)
    got_bytes = bytewise(Framer(), stream)
    assert got_whole == got_bytes
    assert accounted(whole) == len(stream)
    # every frame not disturbed by the garbage before it is found
    clean = Framer()
    expected = clean.feed(b"".join(p + f for p, f, _ in parts))
    assert len(expected) == len(parts)
    if all(0x68 not in g for _, _, g in parts):
        assert got_whole == expected


@given(st.binary(max_size=600))
def test_hostile_bytes_never_raise_whole_or_bytewise(data: bytes) -> None:
    whole = Framer()
    events = whole.feed(data)
    assert all(isinstance(e, Event) for e in events)
    split = Framer()
    assert all(isinstance(e, Event) for e in bytewise(split, data))
    assert accounted(whole) == len(data) == accounted(split)
    whole.flush()
    assert whole.pending == 0


@given(st.lists(st.binary(max_size=30) | frames, max_size=10), st.data())
def test_hostile_mix_in_random_chunks(chunks: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(chunks)
    framer = Framer()
    pos = 0
    events: list[Event] = []
    while pos < len(stream):
        n = data.draw(st.integers(1, 50))
        events += framer.feed(stream[pos : pos + n])
        pos += n
    assert all(isinstance(e, Event) for e in events)
    assert accounted(framer) == len(stream)
