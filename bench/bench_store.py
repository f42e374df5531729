"""Store journal: readings per second through the writer, and bytes written per reading.

Run: ``.venv/bin/python bench/bench_store.py [--csv PATH] [--dir DIR] [--readings N]``.

1. Throughput: ``--threads`` submitters (bus threads), then one, hand ``--readings``
   readings one ``submit()`` at a time to the writer (default group commit); readings
   per second from the first submit to the flush, wall time per submit on the
   caller's thread (with several threads this includes waiting for the GIL), and
   process CPU time per reading (encoding, queue, and the writer's inserts).
2. Flash wear: one simulated hour of 128 meters polled every 15 s (the shared CSV's
   32 meters × 4), committed as the writer does with ``max_delay`` = T seconds (one
   commit per 8.5·T readings), for several T.  "written" is the bytes the process
   handed to write()/pwrite() (/proc/self/io ``wchar``: WAL frames, checkpoints into
   the database, the journal header; not the mmapped -shm index), per reading and
   per hour; "stored" is the database's growth per reading after a final checkpoint.
3. Durable commits (``synchronous=FULL``, one fsync each) per second, one at a time.

``--charging`` instead: the same 128 meters, each billed (its own prepaid account, flat
tariff) through a :class:`~gateway.charging.Charger`, so each reading queues one durable
transaction (reading, charges, rating state) on the writer.  After a warm-up cycle,
durable commits (fsyncs) and bytes written (``wchar``, with the final checkpoint) per
billed reading, for three ways of feeding it: one reading at a time, each waited for
(nothing to group: one transaction per reading); one thread per bus (4) replaying the
CSV at its own pace, ``--seconds`` of it in real time (what a gateway sees: the CSV
reads each bus's 32 meters within 0.4 s at the start of each 15 s cycle, the four
buses in step); and the
same 4 threads as fast as they can (readings queue while the writer fsyncs, and the
writer commits the queued jobs together, each in its own savepoint).  The last two
twice: with the Charger's ``linger`` 0 (each reading's transaction commits as soon as
the writer is free) and ``--linger`` seconds (it waits that long for company: a
polling cycle's readings share one fsync).

The store lives in ``--dir`` (default: a temporary directory under the current one,
so on the same disk).  The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlite_utils import Database

from gateway.charging import Charger
from gateway.config import parse_config
from gateway.protocols.batch import MeterEvent
from gateway.protocols.quantities import Quantity, Reading
from gateway.store import Store
from gateway.store.ledger import EntryKind, TopUp, sync_accounts

__all__ = ["main"]

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared/data/readings-32m-1h.csv"
COLUMNS = {
    "energy_wh": Quantity.ENERGY_IMPORT,
    "power_w": Quantity.POWER,
    "voltage_dv": Quantity.VOLTAGE_A,
    "current_ma": Quantity.CURRENT_A,
}
METERS, PERIOD_S = 128, 15
PER_SECOND = METERS / PERIOD_S


def load(path: Path, copies: int) -> list[Reading]:
    """The CSV's readings, ``copies`` times over with distinct meter names, by time."""
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    readings = [
        Reading(
            meter=f"{copy}{row['meter'][1:]}",
            ts_ms=int(row["ts_ms"]) + copy,
            values={quantity: int(row[name]) for name, quantity in COLUMNS.items()},
        )
        for copy in range(copies)
        for row in rows
    ]
    readings.sort(key=lambda r: r.ts_ms)
    return readings


def wchar() -> int:
    with open("/proc/self/io") as stream:
        for line in stream:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def checkpoint(store: Store) -> None:
    store.writer.call(lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()).result()


def throughput(folder: Path, readings: list[Reading], total: int, threads: int) -> dict[str, float]:
    path = folder / f"throughput-{threads}.db"
    per_thread = total // threads
    # Submitters here outrun the writer on purpose: let the whole run queue up.
    with Store.open(path, gateway_id="bench", max_queue=total + 1) as store:
        started = threading.Barrier(threads + 1)
        submit_s = [0.0] * threads

        def bus(n: int) -> None:
            mine = [readings[(n * per_thread + i) % len(readings)] for i in range(per_thread)]
            started.wait()
            begin = time.perf_counter()
            for reading in mine:
                store.submit(reading)
            submit_s[n] = time.perf_counter() - begin

        workers = [threading.Thread(target=bus, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        cpu = time.process_time()
        started.wait()
        begin = time.perf_counter()
        for worker in workers:
            worker.join()
        store.flush()
        wall = time.perf_counter() - begin
        cpu = time.process_time() - cpu
        stats = store.stats()
    return {
        "readings": per_thread * threads,
        "readings_per_s": round(per_thread * threads / wall),
        "submit_us": round(sum(submit_s) / (per_thread * threads) * 1e6, 2),
        "cpu_us_per_reading": round(cpu / (per_thread * threads) * 1e6, 2),
        "transactions": stats.transactions,
        "max_batch": stats.max_batch,
    }


def wear(folder: Path, readings: list[Reading], interval_s: float) -> dict[str, float]:
    """One simulated hour committed every ``interval_s`` seconds of simulated time."""
    path = folder / f"wear-{interval_s}.db"
    with Store.open(path, gateway_id="bench") as store:
        checkpoint(store)
        size0 = path.stat().st_size
        written0 = wchar()
        per_commit = PER_SECOND * interval_s
        done, commits = 0, 0
        while done < len(readings):
            upto = min(len(readings), round((commits + 1) * per_commit))
            for reading in readings[done:upto]:
                store.submit(reading)
            store.flush()
            done, commits = upto, commits + 1
        written = wchar() - written0
        checkpoint(store)
        written_all = wchar() - written0
        grown = path.stat().st_size - size0
    count = len(readings)
    hours = count / (PER_SECOND * 3600)
    return {
        "commit_interval_s": interval_s,
        "commits": commits,
        "written_bytes_per_reading": round(written_all / count, 1),
        "written_mb_per_hour": round(written_all / hours / 1e6, 2),
        "written_before_final_checkpoint": written,
        "stored_bytes_per_reading": round(grown / count, 1),
    }


def durable(folder: Path, count: int) -> dict[str, float]:
    with Store.open(folder / "durable.db", gateway_id="bench") as store:
        begin = time.perf_counter()
        for n in range(count):
            store.submit_durable([MeterEvent("m", n, 1)]).result()
        wall = time.perf_counter() - begin
    return {
        "durable_commits_per_s": round(count / wall),
        "durable_ms": round(wall / count * 1e3, 2),
    }


BUSES = METERS // 32


def charging_config(readings: list[Reading]) -> str:
    """128 billed meters on 4 buses (one per copy of the CSV), each its own prepaid account."""
    names = sorted({r.meter for r in readings})
    lines = ["gateway_id: bench", "serial_buses:"]
    lines += [f"  - {{name: b{n}, port: /dev/bench{n}, protocol: dlt645}}" for n in range(BUSES)]
    lines.append("meters:")
    lines += [f'  - {{id: "{m}", bus: b{m[0]}, address: "{m}", account: a{m}}}' for m in names]
    lines.append("accounts:")
    lines += [f"  - {{id: a{m}, type: prepaid, tariff: flat}}" for m in names]
    lines += [
        "tariffs:",
        '  - {id: flat, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat,'
        " price: 8500}",
        "uplink: {host: localhost}",
    ]
    return "\n".join(lines) + "\n"


def charging(
    folder: Path, readings: list[Reading], how: str, seconds: float, linger: float
) -> dict[str, object]:
    """Durable commits and bytes written per billed reading, fed ``how``, the charger's
    transactions lingering ``linger`` seconds."""
    config = parse_config(charging_config(readings), "bench.yaml")
    t0 = readings[0].ts_ms
    warm = [r for r in readings if r.ts_ms < t0 + PERIOD_S * 1000]
    rest = [
        r for r in readings if t0 + PERIOD_S * 1000 <= r.ts_ms < t0 + (PERIOD_S + seconds) * 1000
    ]
    path = folder / f"charging-{how.replace(' ', '-')}-{linger:g}.db"
    day = datetime.fromtimestamp(t0 / 1000, UTC).date()
    with Store.open(path, gateway_id="bench", now_ms=lambda: t0) as store:
        store.writer.call(
            lambda db: sync_accounts(db, config.accounts, opened_day=day, opened_ms=0),
            durable=True,
        ).result(60)
        charger = Charger(store.writer, config, now_ms=lambda: t0, linger=linger)
        try:
            for account in config.accounts:
                top_up = TopUp(f"fund-{account.id}", account.id, EntryKind.TOP_UP, 10**8, t0)
                charger.top_up(top_up).result(60)
            for reading in warm:  # each meter's baseline
                charger.submit(reading)
            if not charger.wait_idle(600):
                raise RuntimeError("warm-up not written")
            checkpoint(store)
            before, written0, posted0 = store.stats(), wchar(), charger.posted
            begin = time.perf_counter()
            if how == "one at a time":
                for reading in rest:
                    charger.submit(reading)
                    charger.wait_idle(60)
            else:
                paced = how == "real rate"

                def bus(n: int) -> None:
                    mine = [r for r in rest if r.meter.startswith(str(n))]
                    for reading in mine:
                        if paced:
                            due = begin + (reading.ts_ms - rest[0].ts_ms) / 1000
                            time.sleep(max(0.0, due - time.perf_counter()))
                        charger.submit(reading)

                workers = [threading.Thread(target=bus, args=(n,)) for n in range(BUSES)]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
            if not charger.wait_idle(600):
                raise RuntimeError("readings not written")
            wall = time.perf_counter() - begin
            checkpoint(store)
            written, after = wchar() - written0, store.stats()
            billed = charger.posted - posted0
            if billed != len(rest) or charger.lost or charger.failed:
                raise RuntimeError(f"{billed} of {len(rest)} written, {charger.failed} failed")
        finally:
            charger.close()
    commits = after.durable_transactions - before.durable_transactions
    return {
        "feed": how,
        "linger_s": linger,
        "billed_readings": billed,
        "readings_per_s": round(billed / wall, 1),
        "durable_commits": commits,
        "durable_commits_per_reading": round(commits / billed, 3),
        "written_bytes_per_reading": round(written / billed),
        "written_mb_per_hour": round(written / billed * PER_SECOND * 3600 / 1e6, 1),
    }


def charging_main(args: argparse.Namespace) -> int:
    readings = load(args.csv, BUSES)
    feeds = [("one at a time", 0.0)]
    feeds += [
        (how, linger)
        for how in ("real rate", "as fast as possible")
        for linger in (0.0, args.linger)
    ]
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.dir or Path.cwd()) as tmp:
        rows = [charging(Path(tmp), readings, how, args.seconds, linger) for how, linger in feeds]
    print(f"charging: {METERS} billed meters every {PERIOD_S} s, {args.seconds:g} s of readings")
    for row in rows:
        print(
            f"  {row['feed']:<20} linger {row['linger_s']:<4g}"
            f" {row['billed_readings']} readings ({row['readings_per_s']}/s):"
            f" {row['durable_commits_per_reading']} durable commits/reading,"
            f" written {row['written_bytes_per_reading']} B/reading"
            f" = {row['written_mb_per_hour']} MB/h at {PER_SECOND:.1f} readings/s"
        )
    print(json.dumps({"charging": rows}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="readings CSV (32 meters)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the stores")
    parser.add_argument("--readings", type=int, default=200_000, help="throughput readings")
    parser.add_argument("--threads", type=int, default=4, help="submitting threads")
    parser.add_argument("--durable", type=int, default=200, help="durable commits to time")
    parser.add_argument(
        "--charging", action="store_true", help="billed readings through a Charger instead"
    )
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="--charging: seconds of readings measured"
    )
    parser.add_argument(
        "--linger", type=float, default=1.0, help="--charging: the charger's linger, s (1.0)"
    )
    args = parser.parse_args(argv)
    if args.charging:
        return charging_main(args)
    readings = load(args.csv, METERS // 32)
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.dir or Path.cwd()) as tmp:
        folder = Path(tmp)
        result: dict[str, object] = {
            "throughput": throughput(folder, readings, args.readings, args.threads),
            "throughput_1_thread": throughput(folder, readings, args.readings, 1),
        }
        result["wear"] = [wear(folder, readings, t) for t in (0.25, 1.0, 2.0, 5.0)]
        result["durable"] = durable(folder, args.durable)
        sqlite = Database(memory=True).execute("select sqlite_version()").fetchone()[0]
        result["sqlite"] = sqlite
        result["fs"] = os.statvfs(folder).f_bsize
    tp = result["throughput"]
    assert isinstance(tp, dict)
    print(f"readings through the writer   {tp['readings']} from {args.threads} threads")
    print(f"  readings/s                  {tp['readings_per_s']}")
    print(f"  submit() on the caller      {tp['submit_us']} us")
    print(f"  process CPU per reading     {tp['cpu_us_per_reading']} us")
    print(f"  transactions, largest       {tp['transactions']}, {tp['max_batch']}")
    one = result["throughput_1_thread"]
    assert isinstance(one, dict)
    print(
        f"  from 1 thread               {one['readings_per_s']}/s, submit {one['submit_us']} us,"
        f" CPU {one['cpu_us_per_reading']} us/reading"
    )
    print(f"flash wear: {METERS} meters every {PERIOD_S} s, {len(readings)} readings (1 h)")
    for row in result["wear"]:  # type: ignore[attr-defined]
        print(
            f"  commit every {row['commit_interval_s']:>4} s: written"
            f" {row['written_bytes_per_reading']:>7} B/reading"
            f" = {row['written_mb_per_hour']:>6} MB/h;"
            f" stored {row['stored_bytes_per_reading']} B/reading"
        )
    dur = result["durable"]
    assert isinstance(dur, dict)
    print(
        f"durable commits (fsync)       {dur['durable_commits_per_s']}/s,"
        f" {dur['durable_ms']} ms each"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
