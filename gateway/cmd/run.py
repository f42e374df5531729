"""``gateway run``: the gateway's core: poll every bus, journal, answer ``gateway status``.

::

    gateway run --config FILE [--store PATH] [--socket PATH] [--interval SECONDS]

SIGTERM or SIGINT stops it cleanly: the buses finish the job in hand, the store
commits what is queued and records the stop.  One log line per event on stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    from gateway.poller import PollSettings
    from gateway.status import DEFAULT_SOCKET

    d = PollSettings()
    parser.add_argument("--config", required=True, metavar="FILE", help="gateway configuration")
    parser.add_argument("--store", metavar="PATH", help="SQLite store (default: the config's)")
    parser.add_argument(
        "--socket", default=DEFAULT_SOCKET, metavar="PATH", help=f"status socket ({DEFAULT_SOCKET})"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=d.interval,
        metavar="SECONDS",
        help=f"seconds between polls of a meter; 0: as fast as the line allows ({d.interval:g})",
    )
    parser.add_argument(
        "--fail-after",
        type=int,
        default=d.fail_after,
        metavar="N",
        help=f"failed polls before a meter is flagged ({d.fail_after})",
    )
    parser.add_argument(
        "--backoff",
        type=float,
        default=d.backoff_base,
        metavar="SECONDS",
        help=f"first re-probe delay of a flagged meter, doubling ({d.backoff_base:g})",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.poller import PollSettings
    from gateway.runtime import Runtime

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(args.config)
    settings = PollSettings(
        interval=args.interval, fail_after=args.fail_after, backoff_base=args.backoff
    )
    stop = threading.Event()
    reason = ["stop"]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        reason[0] = signal.Signals(signum).name
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        runtime = Runtime(
            config,
            store_path=args.store,
            settings=settings,
            status_socket=args.socket,
            calendar=True,
        )
        runtime.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            runtime.stop(reason[0])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
