"""``gateway master``: the master station's ingest, and what its store holds.

::

    gateway master run --db PATH --broker HOST:PORT [--prefix gw] [--share GROUP]
                       [--client-id ID] [-v]
    gateway master stats --db PATH

``run`` stores every gateway's batches once and acknowledges them on ``down/ack``
until SIGTERM or SIGINT; one log line per event on stderr.  It exits 1 if the store
fails (nothing more is acknowledged then).  ``stats`` prints, per gateway, its status,
epochs, batches and records stored and when it was last seen.

Test-only fault injection: ``GATEWAY_MASTER_STALL_AFTER_COMMIT=SECONDS`` makes ``run``
sleep after each round's commits, before acknowledging (the window a SIGKILL test aims
at).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from types import FrameType

__all__ = ["configure", "run"]

STALL_ENV = "GATEWAY_MASTER_STALL_AFTER_COMMIT"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("run", help="ingest the gateways' batches into the store")
    p.add_argument("--db", required=True, metavar="PATH", help="the master's SQLite store")
    p.add_argument("--broker", required=True, type=_broker, metavar="HOST:PORT", help="MQTT broker")
    p.add_argument("--prefix", default="gw", help="topic prefix (gw)")
    p.add_argument(
        "--share", metavar="GROUP", help="take batches through the shared subscription GROUP"
    )
    p.add_argument(
        "--client-id",
        default="gateway-master",
        help="MQTT client id; the broker keeps its session (gateway-master)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging (one per batch)")
    s = sub.add_parser("stats", help="per gateway: status, batches, readings, last seen")
    s.add_argument("--db", required=True, metavar="PATH", help="the master's SQLite store")


def run(args: argparse.Namespace) -> int:
    if args.action == "stats":
        return _stats(args)
    return _run(args)


def _broker(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def _run(args: argparse.Namespace) -> int:
    from gateway.cmd.run import OneLineFormatter
    from gateway.master.ingest import Master

    journald = bool(os.environ.get("JOURNAL_STREAM"))  # journald stamps the lines itself
    stream = logging.StreamHandler()
    stream.setFormatter(
        OneLineFormatter(
            ("" if journald else "%(asctime)s ") + "%(levelname)s %(name)s: %(message)s"
        )
    )
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[stream])
    host, port = args.broker
    stall = float(os.environ.get(STALL_ENV, "0") or 0)
    master = Master(
        args.db,
        host,
        port,
        prefix=args.prefix,
        client_id=args.client_id,
        share_group=args.share,
        after_commit=(lambda: time.sleep(stall)) if stall > 0 else None,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        master.start(timeout=None)
        logging.getLogger("gateway.master").info(
            "master: store %s, broker %s:%s, prefix %s", args.db, host, port, args.prefix
        )
        while not stop.wait(0.5):
            if not master.alive():
                break
        failure = master.failure
        master.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 1 if failure is not None else 0


def _stamp(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _stats(args: argparse.Namespace) -> int:
    from gateway.master.store import MasterStore
    from gateway.store.store import wall_ms

    with MasterStore.open(args.db, now_ms=wall_ms, readonly=True) as store:
        rows = store.summary()
        rejected = store.rejected()
    out = sys.stdout
    header: tuple[str, ...] = ("gateway", "status", "epochs", "batches", "readings")
    header += ("events", "ledger", "tasks", "health", "last seen (UTC)")
    table: list[tuple[str, ...]] = [header] + [
        (
            r.gateway_id,
            r.status or "-",
            *(str(n) for n in (r.epochs, r.batches, r.readings, r.events, r.ledger)),
            *(str(n) for n in (r.tasks, r.health)),
            _stamp(r.last_seen_ms),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
    out.write(f"{len(rows)} gateways; {len(rejected)} rejected messages\n")
    return 0
