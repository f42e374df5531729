"""Polling at the line's limit: bus efficiency, useful values per second of bus time,
gateway CPU time per data point, peak RSS and bytes written to disk.

Run: ``.venv/bin/python bench/bench_poll.py [--seconds S] [--meters N]``;
``--charging --fastpath both`` for Step 8's figure (below).

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

With ``--charging`` every meter has its own prepaid account (tariffs: flat, time of use
and tiered in turn), funded before the start so nobody trips, and the gateway charges
each reading (:class:`gateway.charging.Charger` on the fast path); the window starts
once every meter has given three readings (a baseline, then the account's first rating,
which learns its yearly reset and prorated tiers in Python: start-up work, not the
steady state).  The figure is then the gateway's **CPU per 1,000 readings**
(user+system over the window / readings x 1000), and of it the **rating's**: the thread
CPU time of the Charger's per-reading step (``Charger._rate``: the rating, the balance,
the prepaid state), which the rest of the load does not blur.  ``--fastpath both`` runs
the whole bench twice, each in its own gateway process (``GATEWAY_FASTPATH=compiled``,
then ``pure``: the compiled kernel, then its twin), prints each run's JSON and then
both CPU figures with their ratio (pure / compiled).

The last line printed is JSON.  Run as a script, the bench starts itself again as an
imported module (from its bytecode, ``os.execv``) so that the peak RSS is not that of
compiling this file; ``BENCH_POLL_AS_SCRIPT=1`` skips that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from gateway import fastpath
from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.drivers.bus import Bus
from gateway.drivers.jobs import ReadJob
from gateway.drivers.registry import make_driver
from gateway.poller import PollSettings
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.quantities import Reading
from gateway.runtime import Runtime
from gateway.store import Store

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


TARIFFS = """
tariffs:
  - {id: flat, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat, price: 6793}
  - id: tou
    version: 1
    effective: "2024-01-01T00:00:00+08:00"
    kind: tou
    slots: [{start: "00:00", slot: 4}, {start: "08:00", slot: 2}, {start: "11:00", slot: 1},
            {start: "13:00", slot: 3}, {start: "22:00", slot: 4}]
    prices: {1: 13587, 2: 10191, 3: 6793, 4: 2979}
  - {id: tiers, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: tiered,
     thresholds: [2160000, 4200000], prices: [5283, 5783, 8283]}
"""
FUND = 10**10  # 1,000,000 yuan per account: nobody trips during the run


def gateway_yaml(link_dir: str, n: int, store: str, charging: bool = False) -> str:
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
            account = f", account: a-{m['id']}" if charging else ""
            lines.append(f"  - {{id: {m['id']}, bus: {name}, {where}{account}}}")
    lines += ["uplink: {host: localhost}", f"store: {{path: '{store}'}}"]
    if charging:
        lines.append("accounts:")
        for name, protocol, _, _ in BUSES:
            for i, m in enumerate(_meters(name, protocol, n)):
                tariff = ("flat", "tou", "tiers")[i % 3]
                trip = "true" if protocol == "dlt645" else "false"  # Modbus: no relay
                lines.append(
                    f"  - {{id: a-{m['id']}, type: prepaid, tariff: {tariff},"
                    f" trip_on_arrears: {trip}}}"
                )
    return "\n".join(lines) + "\n" + (TARIFFS if charging else "")


def fund(config: Any, store_path: Path) -> None:
    """Every account funded (FUND) before the gateway starts."""
    from gateway.store.ledger import EntryKind, Ledger, TopUp  # only here: memory

    store = Store.open(store_path, gateway_id=config.gateway_id)
    try:
        ledger = Ledger(store)
        ledger.sync_accounts(config.accounts, opened_day=date(2024, 1, 1), opened_ms=0).result(60)
        for account in config.accounts:
            top_up = TopUp(f"fund-{account.id}", account.id, EntryKind.TOP_UP, FUND, 0)
            assert ledger.top_up(top_up).result(60).applied
    finally:
        store.close()


def compare(args: argparse.Namespace) -> int:
    """Run the charging bench once per build, each in its own process; both figures."""
    runs: dict[str, dict[str, Any]] = {}
    for kind in ("compiled", "pure"):
        cmd = [sys.executable, __file__, "--charging", "--fastpath", kind]
        cmd += ["--seconds", str(args.seconds), "--meters", str(args.meters)]
        cmd += ["--baseline-seconds", "0"]
        env = dict(os.environ, GATEWAY_FASTPATH=kind)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        runs[kind] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(runs[kind]), flush=True)
        if runs[kind]["fastpath"] != kind:
            raise SystemExit(f"{kind} run used the {runs[kind]['fastpath']} fast path")
    c, p = (runs[k]["cpu_ms_per_1000_readings"] for k in ("compiled", "pure"))
    rc, rp = (runs[k]["rating_cpu_ms_per_1000_readings"] for k in ("compiled", "pure"))
    print(
        json.dumps(
            {
                "bench": "poll_fastpath",
                "meters": 4 * args.meters,
                "seconds": args.seconds,
                "readings": {k: r["readings"] for k, r in runs.items()},
                "cpu_ms_per_1000_readings": {"compiled": c, "pure": p},
                "ratio_pure_over_compiled": round(p / c, 3) if c else None,
                "rating_cpu_ms_per_1000_readings": {"compiled": rc, "pure": rp},
                "rating_ratio_pure_over_compiled": round(rp / rc, 2) if rc else None,
            }
        )
    )
    return 0


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
    with sim_process(tmp) as sock:
        yield sock


@contextlib.contextmanager
def sim_process(tmp: Path) -> Iterator[Path]:
    """``gateway sim`` on ``tmp/sim.yaml`` in its own process; its control socket."""
    sock = tmp / "control.sock"
    command = [sys.executable, "-m", "gateway", "sim", "--config", str(tmp / "sim.yaml")]
    proc = subprocess.Popen(
        [*command, "--control", str(sock)],
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
        self.by_meter: dict[str, int] = {}

    def submit(self, record: object) -> None:
        if isinstance(record, Reading):
            self.readings += 1
            self.values += len(record.values)
            bus = record.meter.rsplit("-", 1)[0]
            self.by_bus[bus] = self.by_bus.get(bus, 0) + len(record.values)
            self.by_meter[record.meter] = self.by_meter.get(record.meter, 0) + 1
        self.inner.submit(record)


class RatingClock:
    """Wraps the Charger's per-reading rating (``_rate``, under its lock: rating, balance,
    prepaid state): the thread CPU time it takes, a figure the rest of the gateway's
    load does not blur."""

    def __init__(self, charger: Any) -> None:
        self.ns = 0
        self.calls = 0
        inner = charger._rate

        def timed(*args: Any) -> Any:
            t = time.thread_time_ns()
            try:
                return inner(*args)
            finally:
                self.ns += time.thread_time_ns() - t
                self.calls += 1

        charger._rate = timed

    def snapshot(self) -> tuple[int, int]:
        return self.ns, self.calls


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
    parser = argparse.ArgumentParser("bench_poll.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="measuring window (40)")
    parser.add_argument("--meters", type=int, default=32, help="meters per bus (32)")
    parser.add_argument("--baseline-seconds", type=float, default=15.0, help="one-per-value phase")
    parser.add_argument(
        "--charging", action="store_true", help="every meter charged to a funded prepaid account"
    )
    parser.add_argument(
        "--fastpath",
        choices=("auto", "both", "compiled", "pure"),
        default="auto",
        help="both: --charging once per build, in two processes, and the ratio",
    )
    args = parser.parse_args(argv)
    if args.fastpath == "both":
        return compare(args)
    if args.fastpath != "auto" and args.fastpath != fastpath.IMPLEMENTATION:
        loaded = fastpath.IMPLEMENTATION
        raise SystemExit(f"{args.fastpath} asked, {loaded} loaded: set GATEWAY_FASTPATH")
    n = args.meters
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as tmpdir:
        tmp = Path(tmpdir)
        with simulator(tmp, n) as sock:
            store = tmp / "gw.db"
            yaml = gateway_yaml(str(tmp), n, str(store), args.charging)
            config = parse_config(yaml, "bench.yaml")
            if args.charging:
                fund(config, store)
            rt = Runtime(
                config,
                store_path=store,
                settings=PollSettings(interval=0),
                status_socket=None,
                charging=args.charging,
                # charging: the time trusted (as after NTP), so time of use is rated
                clock=SystemClock(config.timezone, trusted=args.charging),
            )
            rt.start()
            assert rt.writer is not None
            counting = Counting(rt.charger if rt.charger is not None else rt.writer)
            rating = RatingClock(rt.charger) if rt.charger is not None else None
            for poller in rt.pollers.values():
                poller.journal = counting  # type: ignore[assignment]
            try:
                time.sleep(3.0)  # warm up: ports open, number checks made, first polls
                if args.charging:  # and every meter rated once (the first is a baseline;
                    # the first rating of an account learns its yearly reset in Python)
                    deadline = time.monotonic() + 120
                    while time.monotonic() < deadline and (
                        len(counting.by_meter) < 4 * n or min(counting.by_meter.values()) < 3
                    ):
                        time.sleep(0.2)
                v0, r0, c0, w0 = counting.values, counting.readings, cpu(), write_bytes()
                k0 = rating.snapshot() if rating is not None else (0, 0)
                b0 = dict(counting.by_bus)
                t0 = time.monotonic()
                time.sleep(args.seconds)
                v1, r1, c1, w1 = counting.values, counting.readings, cpu(), write_bytes()
                k1 = rating.snapshot() if rating is not None else (0, 0)
                b1 = dict(counting.by_bus)
                mem = memory_kb()  # the gateway's peak, before this bench reads the logs
                t1 = time.monotonic()
                own = {name: rt.buses[name].status() for name, *_ in BUSES}
                charged = rt.charger.status() if rt.charger is not None else None
                if rt.charger is not None and charged is not None:  # kernel or Python
                    rater = rt.charger._rating.rater
                    charged["kernel"] = rater.rated
                    charged["fallbacks"] = dict(rater.fallbacks)
            finally:
                rt.stop()
            size = sum(p.stat().st_size for p in tmp.glob("gw.db*"))
            buses: dict[str, dict[str, Any]] = {}
            for name, _, _, _ in BUSES:
                # read only now, after the gateway's peak RSS: the parsed log is the
                # bench's memory, not the gateway's (the simulator keeps 100k entries)
                entries, _ = log_since(sock, name, 0)
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
            baseline = (
                one_request_per_value(config, sock, args.baseline_seconds)
                if args.baseline_seconds > 0
                else {}
            )
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
        "cpu_ms_per_1000_readings": round((c1 - c0) * 1e6 / readings, 2) if readings else None,
        "charging": args.charging,
        "rating_cpu_ms_per_1000_readings": round((k1[0] - k0[0]) / 1e3 / (k1[1] - k0[1]), 2)
        if k1[1] > k0[1]
        else None,
        "fastpath": fastpath.IMPLEMENTATION,
        "charger": charged,
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


_IMPORTED = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import bench_poll;"
    " sys.exit(bench_poll.main())"
)


if __name__ == "__main__":
    if os.environ.get("BENCH_POLL_AS_SCRIPT"):
        sys.exit(main())
    # Run again as an imported module, from bytecode, in a fresh process image: compiling
    # this file's source as __main__ costs about 1 MB of peak RSS (measured: 40.3 MB
    # against 39.2 MB), the bench's, which the gateway (run from bytecode) never has.
    import py_compile

    with contextlib.suppress(py_compile.PyCompileError, OSError):
        py_compile.compile(__file__, doraise=True)
    here = str(Path(__file__).resolve().parent)
    os.execv(sys.executable, [sys.executable, "-c", _IMPORTED, here, *sys.argv[1:]])
