"""Trip latency in bus time, from the simulator's bus log.

Run: ``.venv/bin/python bench/bench_trip.py [--meters N] [--seconds S]``.

The simulator runs as a separate process (``gateway sim`` with a control socket, as in
``bench_poll.py``); this process is the gateway (:class:`gateway.runtime.Runtime` with its
store, charging and the relay controller), polling two buses as fast as the lines allow
(``interval: 0``: the poll queue is never empty, the worst case for a trip):

- ``dl2400``: DL/T 645-2007, 2400 8E1, meter turnaround 20 ms, N meters
- ``mb9600``: Modbus RTU, 9600 8E1, ADW300 (relay holding register), turnaround 10 ms, N meters

Every meter has its own prepaid account drawing 20 kW; the accounts run out at
different moments (their overdraft limits differ), so each trip is its own event (the
storm guard is set out of reach).  When every relay is open, the bus logs are read.

For each trip (the first relay command to a meter on the wire: a 1C frame on the DL/T
line, a write answered by an 8-byte echo on the Modbus line; identified by size, the
log carries no frame bytes):

- **latency**: from the end of the reply that completed the exhausting reading (the
  last reply of that meter's poll before the trip: the reading, and so its charge, exists
  only once its poll is complete) to the start of the trip frame;
- **latency from the energy reply**: the same from the end of the reply that carried the
  energy register (the largest reply of a DL/T 645 poll: 0001FF00, total and tariffs 1-4;
  the driver reads it last, so both figures are the same unless the poll order changes;
  on Modbus one block read carries the whole poll);
- **polls between**: poll transactions on the bus between the exhausting poll and the
  trip (0: the trip did not wait behind the poll queue); **read-backs between**: relay
  read-backs of other meters queued before it (relay jobs are first come, first served).

Goal: latency at most the longest transaction on that bus plus its silent gap; the
ratio latency / goal is printed (<= 1 meets it).  The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_poll import control, log_since, sim_process

from gateway.config import parse_config
from gateway.poller import PollSettings
from gateway.protocols.dlt645 import RelayAction, RelayControl, encode
from gateway.runtime import Runtime

__all__ = ["main"]

BUSES = [  # name, protocol, baud, turnaround ms
    ("dl2400", "dlt645", 2400, 20),
    ("mb9600", "modbus", 9600, 10),
]
WATTS = 20_000
PRICE = 8500  # 0.85 yuan/kWh: 20 kW costs about 47 (0.0001 yuan) a second


def _meters(bus: str, protocol: str, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(1, n + 1):
        m: dict[str, Any] = {"id": f"{bus}-{i}", "bus": bus}
        if protocol == "modbus":
            m.update(unit_id=i, profile="adw300")
        else:
            m.update(address=f"{i:012d}")
        out.append(m)
    return out


def _where(m: dict[str, Any]) -> str:
    if "unit_id" in m:
        return f"unit_id: {m['unit_id']}, profile: {m['profile']}"
    return f"address: '{m['address']}'"


def sim_yaml(link_dir: str, n: int) -> str:
    lines = [f"link_dir: {link_dir}", "buses:"]
    for name, protocol, baud, _ in BUSES:
        lines.append(
            f"  - {{name: {name}, link: {name}, protocol: {protocol}, baud: {baud}, parity: E}}"
        )
    lines.append("meters:")
    for name, protocol, _, turnaround in BUSES:
        for m in _meters(name, protocol, n):
            lines.append(
                f"  - {{id: {m['id']}, bus: {name}, {_where(m)}, phases: 3,"
                f" turnaround_ms: {turnaround}, energy_import_wh: 1234560,"
                f" load: {{kind: constant, watts: {WATTS}}}}}"
            )
    return "\n".join(lines) + "\n"


def gateway_yaml(link_dir: str, n: int, store: str) -> str:
    lines = ["gateway_id: bench-trip", "serial_buses:"]
    for name, protocol, baud, _ in BUSES:
        lines.append(
            f"  - {{name: {name}, port: {link_dir}/{name}, protocol: {protocol},"
            f" baud: {baud}, parity: E}}"
        )
    lines.append("meters:")
    accounts = []
    k = 0
    for name, protocol, _, _ in BUSES:
        for m in _meters(name, protocol, n):
            k += 1
            account = f"T{k}"
            lines.append(f"  - {{id: {m['id']}, bus: {name}, {_where(m)}, account: {account}}}")
            # run out 5 s, 8 s, 11 s ... after the first charge
            overdraft = 47 * (5 + 3 * (k - 1))
            accounts.append(
                f"  - {{id: {account}, type: prepaid, tariff: flat,"
                f" thresholds: {{alarm1: 0, alarm2: 0, overdraft_limit: {overdraft}}}}}"
            )
    lines.append("accounts:")
    lines += accounts
    lines += [
        "tariffs:",
        f"  - {{id: flat, version: 1, effective: '2024-01-01T00:00:00+08:00', kind: flat,"
        f" price: {PRICE}}}",
        "relays: {close_mode: direct, storm: {share_pct: 100, window_s: 1, min_accounts: 1000}}",
        "uplink: {host: localhost}",
        f"store: {{path: '{store}'}}",
    ]
    return "\n".join(lines) + "\n"


def transactions(entries: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(request, reply) pairs of the answered transactions, in order."""
    out = []
    pending: dict[str, Any] | None = None
    for e in entries:
        if e["direction"] == "request":
            pending = e
        elif pending is not None and e["result"] == "ok":
            out.append((pending, e))
            pending = None
    return out


def trips(
    pairs: list[tuple[dict[str, Any], dict[str, Any]]], protocol: str, trip_bytes: int
) -> list[dict[str, Any]]:
    """Per meter, its first relay command and what preceded it."""
    seen: set[str] = set()
    out = []
    for i, (req, rep) in enumerate(pairs):
        is_relay = req["nbytes"] == trip_bytes if protocol == "dlt645" else rep["nbytes"] == 8
        address = req["address"]
        if not is_relay or address in seen:
            continue
        seen.add(address)
        j = i - 1
        while j >= 0 and pairs[j][0]["address"] != address:
            j -= 1
        if j < 0:
            continue
        last = pairs[j][1]
        first = j
        while first > 0 and pairs[first - 1][0]["address"] == address:
            first -= 1
        between = pairs[j + 1 : i]
        readbacks = sum(1 for q, r in between if _readback(q, r, protocol))
        out.append(
            {
                "meter": address,
                "latency_s": req["start"] - last["end"],
                "from_energy_s": req["start"]
                - max(pairs[first : j + 1], key=lambda p: int(p[1]["nbytes"]))[1]["end"],
                "polls_between": len(between) - readbacks,
                "readbacks_between": readbacks,
            }
        )
    return out


def _readback(request: dict[str, Any], reply: dict[str, Any], protocol: str) -> bool:
    """A relay read-back (also RELAY priority, first come first served among relay jobs):
    status word 3 (20-byte request, 18-byte reply) or one register (7-byte reply)."""
    if protocol == "dlt645":
        return bool(request["nbytes"] == 20 and reply["nbytes"] == 18)
    return bool(reply["nbytes"] == 7)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=4, help="meters (accounts) per bus (4)")
    parser.add_argument("--seconds", type=float, default=120.0, help="longest wait for trips")
    args = parser.parse_args(argv)
    n = args.meters
    trip = RelayControl("000000000001", RelayAction.TRIP, datetime(2030, 1, 1))
    trip_bytes = len(encode(trip, preamble=4))  # with the driver's 4 FE wake-up bytes
    with tempfile.TemporaryDirectory(prefix="bench-trip-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "sim.yaml").write_text(sim_yaml(str(tmp), n))
        with sim_process(tmp) as sock:
            store = tmp / "gw.db"
            config = parse_config(gateway_yaml(str(tmp), n, str(store)), "bench.yaml")
            rt = Runtime(
                config,
                store_path=store,
                settings=PollSettings(interval=0),
                status_socket=None,
                charging=True,
            )
            rt.start()
            ids = [m.id for m in config.meters]
            try:
                deadline = time.monotonic() + args.seconds
                while time.monotonic() < deadline:
                    truth = control(sock, {"op": "truth"})["meters"]
                    if all(not truth[m]["relay_closed"] for m in ids):
                        break
                    time.sleep(0.5)
                time.sleep(3.0)  # the read-backs
                relays = rt.relays.status() if rt.relays is not None else {}
            finally:
                rt.stop()
            truth = control(sock, {"op": "truth"})["meters"]
            open_ = sum(1 for m in ids if not truth[m]["relay_closed"])
            buses: dict[str, Any] = {}
            for name, protocol, _, _ in BUSES:
                entries, _ = log_since(sock, name, 0)
                pairs = transactions(entries)
                line = config.bus(name).line
                longest = max(rep["end"] - req["start"] for req, rep in pairs)
                goal = longest + line.modbus_gap
                found = trips(pairs, protocol, trip_bytes)
                worst = max((t["latency_s"] for t in found), default=float("nan"))
                worst_energy = max((t["from_energy_s"] for t in found), default=float("nan"))
                buses[name] = {
                    "trips": len(found),
                    "longest_transaction_ms": round(longest * 1000, 2),
                    "gap_ms": round(line.modbus_gap * 1000, 3),
                    "goal_ms": round(goal * 1000, 2),
                    "latency_ms_max": round(worst * 1000, 2),
                    "latency_ms_mean": round(
                        sum(t["latency_s"] for t in found) * 1000 / max(1, len(found)), 2
                    ),
                    "ratio": round(worst / goal, 3),
                    "from_energy_reply_ms_max": round(worst_energy * 1000, 2),
                    "from_energy_reply_ratio": round(worst_energy / goal, 3),
                    "polls_between_max": max((t["polls_between"] for t in found), default=None),
                    "readbacks_between_max": max(
                        (t["readbacks_between"] for t in found), default=None
                    ),
                }
                print(
                    f"{name}: {len(found)} trips, latency max {worst * 1000:.1f} ms"
                    f" (goal {goal * 1000:.1f} ms: longest transaction"
                    f" {longest * 1000:.1f} ms + gap {line.modbus_gap * 1000:.2f} ms),"
                    f" ratio {worst / goal:.3f}; from the energy reply"
                    f" {worst_energy * 1000:.1f} ms, ratio {worst_energy / goal:.3f}"
                )
    figures = {
        "bench": "trip",
        "meters_per_bus": n,
        "relays_open": open_,
        "meters": len(ids),
        "buses": buses,
        "relays": {k: relays.get(k) for k in ("trips", "resends", "unconfirmed")},
        "python": platform.python_version(),
    }
    print(json.dumps(figures))
    return 0 if open_ == len(ids) else 1


if __name__ == "__main__":
    sys.exit(main())
