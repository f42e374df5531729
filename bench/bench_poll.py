"""Polling at the line's limit: bus efficiency, useful values per second of bus time,
gateway CPU time per data point, peak RSS and bytes written to disk.

Run: ``.venv/bin/python bench/bench_poll.py [--seconds S] [--meters N]``.

The simulator runs as a separate process (``gateway sim`` with a control socket) so
its CPU is not counted; this process is the gateway (:class:`gateway.runtime.Runtime`
with its SQLite store), polling four buses of N meters each at once with the default
configuration except ``interval: 0`` (poll as fast as the line allows):

- ``mb9600``: Modbus RTU, 9600 8E1, meter turnaround 10 ms (SDM120 and SDM630 alternately)
- ``dl2400``: DL/T 645-2007, 2400 8E1, meter turnaround 20 ms (1- and 3-phase alternately)
- ``mb115k`` and ``dl115k``: the same at 115200 8E1

Figures, all ratios measured in one run:

- **Bus efficiency** = the line-limit time of the transactions made / the wall time, from
  the *simulator's* bus log over the window: each transaction's request and reply
  bytes x bits per character / baud, plus the meter's turnaround (the log's reply
  start minus request end) plus the silent gap; wall time from the window's first
  request to its last reply's end plus a gap.  Goals: >= 0.98 at 9600/2400, >= 0.95
  at 115200.
- **Useful values per second of bus time** on mb9600 and dl2400: values stored / the
  line-limit time of the transactions that fetched them, for the gateway's block reads
  and, measured right after on the same line, for one request per value (a Modbus read
  of each register alone; a DL/T 645 read of each single DI).
- **CPU per data point** (one value of one meter): this process's user+system CPU time
  over the window / values stored in it (bus threads, poller, store writer).  Goal
  <= 0.1 ms.  **Peak RSS** of this process.  Goal < 40 MB.
- **Bytes written to disk**: this process's ``write_bytes`` (/proc/self/io) over the
  window, per reading and per hour: at the polling rate of the run, and at the default
  interval (15 s) for the same 4 x N meters.

The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.drivers.bus import Bus
from gateway.drivers.jobs import ReadJob
from gateway.drivers.registry import make_driver
from gateway.poller import PollSettings
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.quantities import Reading
from gateway.runtime import Runtime

__all__ = ["main"]

BUSES = [  # name, protocol, baud, turnaround ms
    ("mb9600", "modbus", 9600, 10),
    ("dl2400", "dlt645", 2400, 20),
    ("mb115k", "modbus", 115200, 10),
    ("dl115k", "dlt645", 115200, 20),
]
DLT_SINGLE_DIS = (  # one request per value of a DL/T 645 poll (3-phase meter)
    0x00010000, 0x00010100, 0x00010200, 0x00010300, 0x00010400, 0x00020000,
    0x02010100, 0x02010200, 0x02010300, 0x02020100, 0x02020200, 0x02020300,
    0x02030000, 0x02060000, 0x02800002,
)  # fmt: skip
PHASES_BC = frozenset({0x02010200, 0x02010300, 0x02020200, 0x02020300})


def _meters(bus: str, protocol: str, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(1, n + 1):
        three = i % 2 == 0
        m: dict[str, Any] = {"id": f"{bus}-{i}", "bus": bus, "phases": 3 if three else 1}
        if protocol == "modbus":
            m.update(unit_id=i, profile="sdm630" if three else "sdm120")
        else:
            m.update(address=f"{i:012d}")
        out.append(m)
    return out


def sim_yaml(link_dir: str, n: int) -> str:
    lines = [f"link_dir: {link_dir}", "buses:"]
    for name, protocol, baud, _ in BUSES:
        lines.append(
            f"  - {{name: {name}, link: {name}, protocol: {protocol}, baud: {baud}, parity: E}}"
        )
    lines.append("meters:")
    for name, protocol, _, turnaround in BUSES:
        for m in _meters(name, protocol, n):
            where = (
                f"unit_id: {m['unit_id']}, profile: {m['profile']}"
                if protocol == "modbus"
                else f"address: '{m['address']}'"
            )
            lines.append(
                f"  - {{id: {m['id']}, bus: {name}, {where}, phases: {m['phases']},"
                f" turnaround_ms: {turnaround}, energy_import_wh: 1234560,"
                f" load: {{kind: constant, watts: 1500}}}}"
            )
    return "\n".join(lines) + "\n"


def gateway_yaml(link_dir: str, n: int, store: str) -> str:
    lines = ["gateway_id: bench", "serial_buses:"]
    for name, protocol, baud, _ in BUSES:
        lines.append(
            f"  - {{name: {name}, port: {link_dir}/{name}, protocol: {protocol},"
            f" baud: {baud}, parity: E}}"
        )
    lines.append("meters:")
    for name, protocol, _, _ in BUSES:
        for m in _meters(name, protocol, n):
            where = (
                f"unit_id: {m['unit_id']}, profile: {m['profile']}"
                if protocol == "modbus"
                else f"address: '{m['address']}'"
            )
            lines.append(f"  - {{id: {m['id']}, bus: {name}, {where}}}")
    lines += ["uplink: {host: localhost}", f"store: {{path: '{store}'}}"]
    return "\n".join(lines) + "\n"


def control(path: Path, request: dict[str, Any]) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def log_since(sock: Path, bus: str, since: int) -> tuple[list[dict[str, Any]], int]:
    entries: list[dict[str, Any]] = []
    while True:
        got = control(sock, {"op": "log", "bus": bus, "since": since, "limit": 5000})
        entries += got["entries"]
        if not got["entries"]:
            return entries, since
        since = got["next"]


def line_limit(entries: list[dict[str, Any]], line: LineSettings) -> tuple[float, float, int, int]:
    """(line-limit seconds of the answered transactions, wall seconds, transactions,
    collisions) over ``entries`` (a bus log window)."""
    char, gap = line.char_time, line.modbus_gap
    total, count, collisions = 0.0, 0, 0
    pending: dict[str, Any] | None = None
    first = last = None
    for e in entries:
        if e["result"] == "collision":
            collisions += 1
        if e["direction"] == "request":
            pending = e
            first = e["start"] if first is None else first
            continue
        if pending is not None and e["result"] == "ok":
            total += e["start"] + e["nbytes"] * char - pending["start"] + gap
            count += 1
            last = e["start"] + e["nbytes"] * char + gap
        pending = None
    wall = (last - first) if first is not None and last is not None else float("nan")
    return total, wall, count, collisions


def write_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return None


def memory_kb() -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of this process, kB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line[:5]] = int(line.split()[1])
    return out


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def simulator(tmp: Path, n: int) -> Iterator[Path]:
    (tmp / "sim.yaml").write_text(sim_yaml(str(tmp), n))
    sock = tmp / "control.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "sim",
            "--config",
            str(tmp / "sim.yaml"),
            "--control",
            str(sock),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the simulator did not start")
            time.sleep(0.05)
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def values_in(readings: list[Reading]) -> int:
    return sum(len(r.values) for r in readings)


class Counting:
    """Wraps the store writer: counts what the pollers hand it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.readings = 0
        self.values = 0
        self.by_bus: dict[str, int] = {}

    def submit(self, record: object) -> None:
        if isinstance(record, Reading):
            self.readings += 1
            self.values += len(record.values)
            bus = record.meter.rsplit("-", 1)[0]
            self.by_bus[bus] = self.by_bus.get(bus, 0) + len(record.values)
        self.inner.submit(record)


def one_request_per_value(rt_config: Any, sock: Path, seconds: float) -> dict[str, float]:
    """Values per second of bus time when every value is its own request."""
    out: dict[str, float] = {}
    clock = SystemClock()
    for bus_config in rt_config.serial_buses:
        if bus_config.name not in ("mb9600", "dl2400"):
            continue
        drivers = {m.id: make_driver(m, bus_config) for m in rt_config.meters_on(bus_config.name)}
        bus = Bus(bus_config, drivers, clock=clock).start()
        since = log_since(sock, bus_config.name, 0)[1]
        values = 0
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                for meter_id, driver in drivers.items():
                    if time.monotonic() >= end:
                        break
                    if bus_config.protocol == "modbus":
                        jobs = [
                            ReadJob(meter_id, (), (r.quantity,)) for r in driver.profile.registers
                        ]  # type: ignore[attr-defined]
                    else:
                        three = int(meter_id.rsplit("-", 1)[1]) % 2 == 0
                        dis = tuple(d for d in DLT_SINGLE_DIS if three or d not in PHASES_BC)
                        jobs = [ReadJob(meter_id, (di,)) for di in dis]
                    for job in jobs:
                        result = bus.submit(job).result(10)
                        if result.ok and result.reading is not None:
                            values += len(result.reading.values)
        finally:
            bus.stop()
        entries, _ = log_since(sock, bus_config.name, since)
        busy, _, _, _ = line_limit(entries, bus_config.line)
        out[bus_config.name] = values / busy if busy else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="measuring window (40)")
    parser.add_argument("--meters", type=int, default=32, help="meters per bus (32)")
    parser.add_argument("--baseline-seconds", type=float, default=15.0, help="one-per-value phase")
    args = parser.parse_args(argv)
    n = args.meters
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as tmpdir:
        tmp = Path(tmpdir)
        with simulator(tmp, n) as sock:
            store = tmp / "gw.db"
            config = parse_config(gateway_yaml(str(tmp), n, str(store)), "bench.yaml")
            rt = Runtime(
                config, store_path=store, settings=PollSettings(interval=0), status_socket=None
            )
            rt.start()
            assert rt.writer is not None
            counting = Counting(rt.writer)
            for poller in rt.pollers.values():
                poller.journal = counting  # type: ignore[assignment]
            try:
                time.sleep(3.0)  # warm up: ports open, number checks made, first polls
                since = {name: log_since(sock, name, 0)[1] for name, *_ in BUSES}
                v0, r0, c0, w0 = counting.values, counting.readings, cpu(), write_bytes()
                b0 = dict(counting.by_bus)
                t0 = time.monotonic()
                time.sleep(args.seconds)
                v1, r1, c1, w1 = counting.values, counting.readings, cpu(), write_bytes()
                b1 = dict(counting.by_bus)
                mem = memory_kb()  # the gateway's peak, before this bench reads the logs
                t1 = time.monotonic()
                own = {name: rt.buses[name].status() for name, *_ in BUSES}
            finally:
                rt.stop()
            size = sum(p.stat().st_size for p in tmp.glob("gw.db*"))
            buses: dict[str, dict[str, Any]] = {}
            for name, _, _, _ in BUSES:
                entries, _ = log_since(sock, name, since[name])
                entries = [e for e in entries if t0 <= e["start"] < t1]  # same monotonic clock
                line = config.bus(name).line
                busy, wall, count, coll = line_limit(entries, line)
                buses[name] = {
                    "efficiency": round(busy / wall, 4),
                    "gateway_efficiency": own[name]["efficiency"],
                    "gateway_errors": own[name]["errors"],
                    "transactions": count,
                    "collisions": coll,
                    "line_seconds": round(busy, 3),
                    "values": b1.get(name, 0) - b0.get(name, 0),
                }
            baseline = one_request_per_value(config, sock, args.baseline_seconds)
    points = v1 - v0
    readings = r1 - r0
    cpu_per_point_ms = (c1 - c0) * 1000 / points if points else float("nan")
    rss_mb = mem["VmHWM"] / 1024
    written = None if w0 is None or w1 is None else w1 - w0
    per_reading = written / readings if written is not None and readings else None
    hour = 3600 / (t1 - t0)
    default_readings_per_hour = 4 * n * 3600 / PollSettings().interval
    figures: dict[str, Any] = {
        "bench": "poll",
        "meters_per_bus": n,
        "seconds": round(t1 - t0, 1),
        "buses": buses,
        "values_per_bus_second_block": {
            k: round(b["values"] / b["line_seconds"], 1)
            for k, b in buses.items()
            if b["line_seconds"]
        },
        "values_per_bus_second_one_per_value": {k: round(v, 1) for k, v in baseline.items()},
        "points": points,
        "readings": readings,
        "cpu_ms_per_point": round(cpu_per_point_ms, 4),
        "peak_rss_mb": round(rss_mb, 1),
        "rss_mb_at_end": round(mem["VmRSS"] / 1024, 1),
        "disk_write_bytes": written,
        "disk_bytes_per_reading": None if per_reading is None else round(per_reading, 1),
        "disk_bytes_per_hour_at_run_rate": None if written is None else int(written * hour),
        "disk_bytes_per_hour_at_default_interval": None
        if per_reading is None
        else int(per_reading * default_readings_per_hour),
        "store_file_bytes": size,
        "python": platform.python_version(),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
