"""Simulator throughput: transactions per second a simulated bus serves with timing off.

Run: ``.venv/bin/python bench/bench_sim.py [--seconds S] [--meters N]``.  Starts a
simulator with one Modbus RTU bus (``generic`` meters, FC03 read of the 10 registers)
and one DL/T 645 bus (read of forward active energy 00010000, 4 FE wake-up bytes) with
``timing: false``, and drives each from a client on the pty that sends one request,
waits for the whole reply, and sends the next (as a gateway does), rotating over the
meters.  Figures: each bus alone, then both at once (two client threads).  Every
reply is checked for length; a sample is decoded; the bus counters must match.

For scale: with timing on, one such Modbus transaction at 9600 baud 8N1 (turnaround
10 ms) holds the line ~48 ms (about 21/s), a DL/T one at 2400 8E1 (20 ms) ~217 ms
(about 4.6/s): the bench simulator must serve well above 1,000/s so it is never the
bottleneck.  The calendar clock runs (physics integrates on every request).  The last
line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import sys
import tempfile
import threading
import time
import tty
from datetime import UTC, datetime

from gateway.clock import ShiftedClock
from gateway.protocols import dlt645
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.modbus import ReadRequest, decode_reply, encode_request
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator

__all__ = ["main"]

GOAL = 1000


def config_text(meters: int) -> str:
    lines = [
        "buses:",
        "  - {name: mb, link: mb, protocol: modbus, baud: 115200, timing: false}",
        "  - {name: dl, link: dl, protocol: dlt645, baud: 115200, timing: false}",
        "meters:",
    ]
    for i in range(1, meters + 1):
        lines.append(
            f"  - {{id: m{i}, bus: mb, unit_id: {i}, profile: generic,"
            f" energy_import_wh: {1000 * i}, load: {{kind: constant, watts: {100 * i}}}}}"
        )
        lines.append(
            f'  - {{id: d{i}, bus: dl, address: "{i:012d}", energy_import_wh: {1000 * i},'
            f" load: {{kind: constant, watts: {100 * i}}}}}"
        )
    return "\n".join(lines) + "\n"


class Client:
    """A bare master on the pty: write a request, read exactly the reply's length."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)

    def transact(self, request: bytes, size: int) -> bytes:
        os.write(self.fd, request)
        got = b""
        while len(got) < size:
            ready, _, _ = select.select([self.fd], [], [], 2.0)
            if not ready:
                raise RuntimeError(f"no reply after {len(got)} of {size} bytes")
            got += os.read(self.fd, size - len(got))
        return got

    def close(self) -> None:
        os.close(self.fd)


def workload(protocol: str, meters: int) -> list[tuple[bytes, int]]:
    """(request, reply size) per meter."""
    out = []
    for i in range(1, meters + 1):
        if protocol == "modbus":
            out.append((encode_request(ReadRequest(i, 3, 0, 10)), 25))
        else:
            request = dlt645.encode(dlt645.ReadRequest(f"{i:012d}", 0x00010000), preamble=4)
            out.append((request, 20))
    return out


def drive(path: str, jobs: list[tuple[bytes, int]], seconds: float, out: dict[str, float]) -> None:
    client = Client(path)
    try:
        n = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for request, size in jobs:
                reply = client.transact(request, size)
                if len(reply) != size:
                    raise RuntimeError("short reply")
            n += len(jobs)
            now = time.perf_counter()
            if now >= deadline:
                break
        out["transactions"] = n
        out["seconds"] = now - start
        out["last_reply"] = reply  # type: ignore[assignment]
    finally:
        client.close()


def measure(sim: Simulator, buses: list[str], seconds: float, meters: int) -> dict[str, float]:
    results: dict[str, dict[str, float]] = {b: {} for b in buses}
    before = {b: sim.bus(b).counters.transactions for b in buses}
    threads = [
        threading.Thread(
            target=drive,
            args=(sim.bus(b).path, workload(sim.bus(b).protocol, meters), seconds, results[b]),
        )
        for b in buses
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rates = {}
    for b in buses:
        r = results[b]
        if "transactions" not in r:
            raise RuntimeError(f"bus {b}: the client failed")
        if sim.bus(b).counters.transactions - before[b] != r["transactions"]:
            raise RuntimeError(f"bus {b}: counters disagree with the client")
        rates[b] = r["transactions"] / r["seconds"]
    check_sample(sim, results)
    return rates


def check_sample(sim: Simulator, results: dict[str, dict[str, float]]) -> None:
    for b, r in results.items():
        reply = bytes(r["last_reply"])  # type: ignore[arg-type]
        if sim.bus(b).protocol == "modbus":
            decode_reply(ReadRequest(reply[0], 3, 0, 10), reply)
        elif not isinstance(dlt645.decode_frame(reply), dlt645.ReadReply):
            raise RuntimeError("DL/T reply does not decode")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--meters", type=int, default=4, help="meters per bus")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gw-bench-sim-") as tmp:
        config = parse_sim_config(config_text(args.meters), "bench", link_dir=tmp)
        clock = ShiftedClock(datetime(2024, 6, 1, 4, tzinfo=UTC))  # physics integrates
        with Simulator(config, clock) as sim:
            modbus = measure(sim, ["mb"], args.seconds, args.meters)["mb"]
            dl = measure(sim, ["dl"], args.seconds, args.meters)["dl"]
            both = measure(sim, ["mb", "dl"], args.seconds, args.meters)
    modbus_line = LineSettings(9600, 8, "N", 1).transaction_time(8, 25, 0.010)
    dlt_line = LineSettings(2400, 8, "E", 1).transaction_time(20, 20, 0.020)
    print(f"modbus bus alone (FC03 x10, {args.meters} meters):  {modbus:8.0f} transactions/s")
    print(f"dlt645 bus alone (read 00010000, {args.meters} meters): {dl:8.0f} transactions/s")
    print(
        f"both buses at once:  modbus {both['mb']:6.0f}/s  dlt645 {both['dl']:6.0f}/s"
        f"  total {both['mb'] + both['dl']:6.0f}/s"
    )
    print(
        f"a real line allows:  modbus 9600 8N1 {1 / modbus_line:4.1f}/s,"
        f" dlt645 2400 8E1 {1 / dlt_line:4.1f}/s (turnaround 10/20 ms)"
    )
    ok = min(modbus, dl) >= GOAL
    print(f"goal well above {GOAL}/s per bus: {'met' if ok else 'NOT met'}")
    print(
        json.dumps(
            {
                "bench": "sim",
                "modbus_tps": round(modbus),
                "dlt645_tps": round(dl),
                "both_modbus_tps": round(both["mb"]),
                "both_dlt645_tps": round(both["dl"]),
                "goal_tps": GOAL,
                "goal_met": ok,
                "meters_per_bus": args.meters,
                "seconds": args.seconds,
                "python": platform.python_version(),
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
