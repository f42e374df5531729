"""Bytes per reading of the CBOR batch schema v1, against typical gateway JSON.

Run: ``.venv/bin/python bench/bench_cbor.py [--csv PATH] [--batch N] [--breakdown]``.
The CSV has columns ts_ms, meter, energy_wh, power_w, voltage_dv, current_ma.  Readings
go into batches of ``--batch`` readings in file order; every batch is decoded on its own
and must equal its input (exit status 1 otherwise).  The last line printed is JSON.

``--breakdown`` also prints where the bytes go, per reading: each part of the readings
section (meter dictionary, meter column, timestamps, each quantity's column, with the
mode the encoder chose), the rest of the map (header, keys) so the parts add up to the
total, and the size of the same batches with every packed-varint column written as a
plain CBOR array of the same deltas (same modes).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cbor2

from gateway.protocols.batch import Batch, decode_batch, encode_batch
from gateway.protocols.batch_columns import Mode, unpack_varints
from gateway.protocols.quantities import Quantity, Reading

__all__ = ["main"]

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared/data/readings-32m-1h.csv"
COLUMNS = {
    "energy_wh": Quantity.ENERGY_IMPORT,
    "power_w": Quantity.POWER,
    "voltage_dv": Quantity.VOLTAGE_A,
    "current_ma": Quantity.CURRENT_A,
}


def load(path: Path) -> list[Reading]:
    """The CSV's rows as readings, in file order."""
    with path.open(newline="") as stream:
        return [
            Reading(
                meter=row["meter"],
                ts_ms=int(row["ts_ms"]),
                values={quantity: int(row[name]) for name, quantity in COLUMNS.items()},
            )
            for row in csv.DictReader(stream)
        ]


def gateway_json(reading: Reading) -> bytes:
    """One reading as a typical gateway sends it: device name, ts, named values."""
    names = {quantity: name for name, quantity in COLUMNS.items()}
    message = {
        "device": reading.meter,
        "ts": reading.ts_ms,
        "values": {names[q]: v for q, v in reading.values.items()},
    }
    return json.dumps(message).encode()


def _size(obj: object) -> int:
    return len(cbor2.dumps(obj))


def _as_arrays(column: object) -> object:
    """A column with packed varints written as a plain CBOR array (same mode, deltas)."""
    assert isinstance(column, list)
    values = column[1]
    if isinstance(values, bytes):
        return [column[0], unpack_varints(values), *column[2:]]
    return column


def breakdown(encoded: list[bytes], readings: int) -> dict[str, object]:
    """Bytes per reading of each part of the batches, and of the plain-array variant.

    A part's bytes are its map key's and its value's; the meter column is the key and
    the cycle length ``k`` when the poller went round the meters in turn.
    """
    parts: dict[str, int] = {}
    modes: dict[str, set[str]] = {}
    names = {q.value: name for name, q in COLUMNS.items()}
    plain = 0

    def add(part: str, key: int, value: object) -> None:
        parts[part] = parts.get(part, 0) + _size(key) + _size(value)
        if part != "meter dictionary" and isinstance(value, list):
            modes.setdefault(part, set()).add(Mode(value[0]).name.lower())

    for data in encoded:
        batch = cbor2.loads(data)
        add("meter dictionary", 4, batch[4])
        section = batch[5]
        meter_column = section[0]
        parts["meter column"] = parts.get("meter column", 0) + _size(0) + _size(meter_column)
        add("ts_ms", 1, section[1])
        if 2 in section:
            add("flags", 2, section[2])
        for code, column in section[3].items():
            add(names.get(code, f"quantity {code}"), code, column)
        # the same batch with every column as a plain CBOR array
        section[1] = _as_arrays(section[1])
        if 2 in section:
            section[2] = _as_arrays(section[2])
        if not isinstance(meter_column, int):
            section[0] = _as_arrays(meter_column)
        section[3] = {code: _as_arrays(column) for code, column in section[3].items()}
        plain += len(cbor2.dumps(batch))
    total = sum(len(data) for data in encoded)
    parts["header and keys"] = total - sum(parts.values())
    return {
        "bytes_per_reading": {k: round(v / readings, 2) for k, v in parts.items()},
        "modes": {k: "/".join(sorted(v)) for k, v in modes.items()},
        "plain_arrays_bytes_per_reading": round(plain / readings, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="readings CSV")
    parser.add_argument("--batch", type=int, default=200, help="readings per batch")
    parser.add_argument(
        "--breakdown", action="store_true", help="also print where the bytes go, per reading"
    )
    args = parser.parse_args(argv)

    readings = load(args.csv)
    batches = [
        Batch("gw-bench-01", epoch=0x1234_5678_9ABC_DEF0, seq=seq, readings=tuple(chunk))
        for seq, chunk in enumerate(
            (readings[i : i + args.batch] for i in range(0, len(readings), args.batch)), start=1
        )
    ]

    start = time.perf_counter()
    encoded = [encode_batch(batch) for batch in batches]
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = [decode_batch(data) for data in encoded]
    decode_s = time.perf_counter() - start
    failed = [b.seq for b, d in zip(batches, decoded, strict=True) if b != d]

    cbor_bytes = sum(len(data) for data in encoded)
    json_bytes = sum(len(gateway_json(reading)) for reading in readings)
    result = {
        "readings": len(readings),
        "batches": len(batches),
        "cbor_bytes": cbor_bytes,
        "cbor_bytes_per_reading": round(cbor_bytes / len(readings), 3),
        "json_bytes_per_reading": round(json_bytes / len(readings), 3),
        "ratio": round(json_bytes / cbor_bytes, 2),
        "encode_readings_per_s": round(len(readings) / encode_s),
        "decode_readings_per_s": round(len(readings) / decode_s),
        "roundtrip_failures": len(failed),
    }
    print(f"readings                {result['readings']}")
    print(f"batches                 {result['batches']} of up to {args.batch} readings")
    print(f"CBOR bytes/reading      {result['cbor_bytes_per_reading']:.2f}")
    print(f"gateway JSON bytes/rdg  {result['json_bytes_per_reading']:.2f}")
    print(f"JSON / CBOR             {result['ratio']:.1f}x")
    print(f"encode                  {result['encode_readings_per_s']} readings/s")
    print(f"decode                  {result['decode_readings_per_s']} readings/s")
    if args.breakdown:
        parts = breakdown(encoded, len(readings))
        result["breakdown"] = parts
        per_part = parts["bytes_per_reading"]
        modes = parts["modes"]
        assert isinstance(per_part, dict) and isinstance(modes, dict)
        for part, size in per_part.items():
            mode = f"  ({modes[part]})" if part in modes else ""
            print(f"  {part:<22}{size:.2f}{mode}")
        plain = parts["plain_arrays_bytes_per_reading"]
        print(f"plain CBOR arrays       {plain:.2f} bytes/reading (same modes, no packed varints)")
    if failed:
        print(f"ROUND TRIP FAILED for batches {failed}", file=sys.stderr)
    print(json.dumps(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
