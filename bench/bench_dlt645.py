"""DL/T 645 codec throughput: frames decoded and encoded per second.

Run: ``.venv/bin/python bench/bench_dlt645.py [--seconds S] [--warmup W]``.  Measures,
after ``--warmup`` seconds (default 0.2) of the same work, on a mix of typical poll
traffic (read requests, energy/voltage/block replies, error replies):

* ``decode_frame`` on whole frames (envelope, then event),
* the same plus the value through the DI table (what a poller does per reply),
* the stream framer fed a stream with a 4-byte FE preamble before every frame, once
  in one chunk and once in 32-byte chunks,
* ``encode`` of the same events.

For scale: at 2400 baud 8E1 a 20-byte reply takes 92 ms on the wire, so one bus
delivers about 10 frames a second.  Each measurement is also printed as a multiple of
what such a line can carry: the mix's frames back to back (no gaps, no turnaround:
an upper bound) at :class:`~gateway.protocols.linetiming.LineSettings` 2400 8E1, the
framer's with their 4-byte FE preamble.  The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal as D

from gateway.protocols.dlt645 import (
    ErrorBits,
    Event,
    Framer,
    NegativeReply,
    ReadReply,
    ReadRequest,
    RelayAction,
    RelayControl,
    decode_frame,
    decode_value,
    encode,
    encode_value,
)
from gateway.protocols.dlt645.dataids import Value
from gateway.protocols.linetiming import LineSettings

__all__ = ["main"]

METER = "123456789012"
LINE = LineSettings(baud=2400, parity="E")  # DL/T 645's usual 2400 8E1
PREAMBLE = 4


def traffic() -> list[Event]:
    """A poll cycle's worth of frames, both directions."""

    def reply(di: int, value: Value) -> ReadReply:
        return ReadReply(METER, di, encode_value(di, value))

    return [
        ReadRequest(METER, 0x00010000),
        reply(0x00010000, D("12345.67")),
        ReadRequest(METER, 0x02010100),
        reply(0x02010100, D("220.1")),
        ReadRequest(METER, 0x02030000),
        reply(0x02030000, D("-1.2345")),
        ReadRequest(METER, 0x0001FF00),
        reply(0x0001FF00, {"total": D("100.00"), "t1": D("10.00"), "t2": D("20.00")}),
        ReadRequest(METER, 0x04000503),
        reply(0x04000503, 0x1010),
        NegativeReply(METER, 0x11, ErrorBits.NO_DATA),
        RelayControl(METER, RelayAction.TRIP, datetime(2026, 11, 22, 10, 5)),
    ]


def line_frames_per_s(frames: list[bytes], preamble: int = 0) -> float:
    """Frames a second the line carries, these frames back to back (an upper bound)."""
    return len(frames) / sum(LINE.wire_time(preamble + len(f)) for f in frames)


def rate(work: Callable[[], int], seconds: float, warmup: float = 0.2) -> float:
    """Items per second: call ``work`` (which returns how many items it did) repeatedly,
    after calling it for ``warmup`` seconds untimed (caches, allocator, branch history)."""
    start = time.perf_counter()
    work()
    while time.perf_counter() - start < warmup:
        work()
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += work()
    return done / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--warmup", type=float, default=0.2, help="untimed warm-up, seconds")
    args = parser.parse_args(argv)

    events = traffic()
    frames = [encode(e) for e in events]
    if [decode_frame(f) for f in frames] != events:
        print("decode(encode(e)) != e", file=sys.stderr)
        return 1
    stream = b"".join(b"\xfe" * 4 + f for f in frames) * 20
    per_stream = len(frames) * 20
    chunks = [stream[i : i + 32] for i in range(0, len(stream), 32)]

    def decode_whole() -> int:
        for f in frames:
            decode_frame(f)
        return len(frames)

    def decode_with_values() -> int:
        for f in frames:
            event = decode_frame(f)
            if isinstance(event, ReadReply):
                decode_value(event.di, event.data)
        return len(frames)

    def framer_one_chunk() -> int:
        return len(Framer().feed(stream))

    def framer_32_byte_chunks() -> int:
        framer = Framer()
        n = 0
        for chunk in chunks:
            n += len(framer.feed(chunk))
        return n

    def encode_all() -> int:
        for e in events:
            encode(e)
        return len(events)

    if framer_one_chunk() != per_stream or framer_32_byte_chunks() != per_stream:
        print("the framer lost frames", file=sys.stderr)
        return 1

    s, w = args.seconds, args.warmup
    results = {
        "decode_frame_per_s": rate(decode_whole, s, w),
        "decode_frame_and_value_per_s": rate(decode_with_values, s, w),
        "framer_fe_stream_per_s": rate(framer_one_chunk, s, w),
        "framer_fe_stream_32b_chunks_per_s": rate(framer_32_byte_chunks, s, w),
        "encode_per_s": rate(encode_all, s, w),
    }
    bare = line_frames_per_s(frames)
    with_preamble = line_frames_per_s(frames, PREAMBLE)
    line = {name: with_preamble if name.startswith("framer") else bare for name in results}
    print(
        f"2400 8E1 line: {bare:.2f} frames/s of this mix back to back"
        f" ({with_preamble:.2f} with a {PREAMBLE}-byte FE preamble)"
    )
    for name, value in results.items():
        print(f"{name:<36}{value:>12,.0f} frames/s  {value / line[name]:>8,.0f}x the line")
    summary = {
        "bench": "dlt645",
        "python": platform.python_version(),
        "mean_frame_bytes": round(sum(map(len, frames)) / len(frames), 1),
        "line_2400_8e1_frames_per_s": round(bare, 2),
        "line_2400_8e1_fe_frames_per_s": round(with_preamble, 2),
        **{k: round(v) for k, v in results.items()},
        **{k.replace("_per_s", "_x_line"): round(v / line[k]) for k, v in results.items()},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
