"""``gateway sim``: simulated RS-485 buses of meters on pseudo-terminals.

::

    gateway sim [--config SIM.yaml] [--state FILE] [--control SOCKET] [--live]
    gateway sim ctl SOCKET '{"op": "truth"}'

Without ``--config`` the packaged example bench runs.  Each bus is a raw pty behind
a stable symlink (``link_dir``/``link``); the state file and the control socket
default to ``state.json`` and ``control.sock`` in the link directory.  SIGTERM or
SIGINT stops it cleanly: links removed, state file written a last time.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.clock import monotonic
from gateway.errors import ConfigError

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="SIM.yaml", help="bench to run (default: the example)")
    parser.add_argument(
        "--state", metavar="FILE", help="JSON state file (default: LINK_DIR/state.json)"
    )
    parser.add_argument(
        "--control", metavar="SOCKET", help="control socket (default: LINK_DIR/control.sock)"
    )
    parser.add_argument(
        "--link-dir", metavar="DIR", help="make the bus links here (overrides the file)"
    )
    parser.add_argument("--live", action="store_true", help="print one line per bus every second")
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop after this long (default: run until signalled)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    ctl = sub.add_parser(
        "ctl", help="send one JSON request to a running simulator's control socket"
    )
    ctl.add_argument("socket", metavar="SOCKET")
    ctl.add_argument("request", metavar="JSON", help='e.g. \'{"op": "truth"}\'')


def _ctl(args: argparse.Namespace) -> int:
    from gateway.sim.control import request

    try:
        req = json.loads(args.request)
    except ValueError as exc:
        raise ConfigError(f"the request is not JSON: {exc}", file="<command line>") from exc
    answer = request(args.socket, req)
    print(json.dumps(answer, indent=1, ensure_ascii=False))
    return 0 if isinstance(answer, dict) and answer.get("ok") else 1


def _live_line(name: str, now: dict[str, Any], before: dict[str, Any], seconds: float) -> str:
    def rate(key: str) -> float:
        return float(now[key] - before[key]) / seconds

    busy = 100.0 * rate("busy_seconds")
    return (
        f"{datetime.now():%H:%M:%S} {name:<10} {rate('transactions'):7.1f} tx/s"
        f" {rate('requests'):7.1f} req/s  in {rate('bytes_in'):7.0f} B/s"
        f"  out {rate('bytes_out'):7.0f} B/s  coll {now['collisions']}"
        f"  garbled {now['garbled']}  faults {now['faults_injected']}  busy {busy:5.1f}%"
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "ctl":
        return _ctl(args)
    from gateway.sim.config import example_sim_config_path, load_sim_config
    from gateway.sim.service import Simulator

    config = load_sim_config(args.config or example_sim_config_path(), link_dir=args.link_dir)
    link_dir = Path(config.link_dir)
    state = Path(args.state) if args.state else link_dir / "state.json"
    control = Path(args.control) if args.control else link_dir / "control.sock"
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    sim = Simulator(config, state_path=state, control_path=control)
    try:
        sim.start()
        for bus in sim.buses.values():
            line = bus.line
            print(
                f"{bus.name}: {bus.path} -> {bus.pty_name} ({bus.protocol} {line.baud}"
                f" {line.data_bits}{line.parity}{line.stop_bits}, {len(bus.meters)} meters,"
                f" timing {'on' if bus.timing else 'off'})"
            )
        print(f"state: {state}  control: {control}  (stop with Ctrl-C or SIGTERM)", flush=True)
        deadline = None if args.duration is None else monotonic() + args.duration
        last = {name: bus.counters.as_dict() for name, bus in sim.buses.items()}
        last_t = monotonic()
        while not stop.is_set():
            wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - monotonic()))
            if stop.wait(wait) or (deadline is not None and monotonic() >= deadline):
                break
            if args.live:
                t = monotonic()
                for name, bus in sim.buses.items():
                    now = bus.counters.as_dict()
                    print(_live_line(name, now, last[name], max(t - last_t, 1e-3)))
                    last[name] = now
                last_t = t
                sys.stdout.flush()
    finally:
        sim.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("simulator stopped", flush=True)
    return 0
