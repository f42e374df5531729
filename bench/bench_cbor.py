"""Bytes per reading of the CBOR batch schema v1, against typical gateway JSON.

Run: ``.venv/bin/python bench/bench_cbor.py [--csv PATH] [--batch N]``.  The CSV has
columns ts_ms, meter, energy_wh, power_w, voltage_dv, current_ma.  Readings go into
batches of ``--batch`` readings in file order; every batch is decoded on its own and
must equal its input (exit status 1 otherwise).  The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from gateway.protocols.batch import Batch, decode_batch, encode_batch
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="readings CSV")
    parser.add_argument("--batch", type=int, default=200, help="readings per batch")
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
    if failed:
        print(f"ROUND TRIP FAILED for batches {failed}", file=sys.stderr)
    print(json.dumps(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
