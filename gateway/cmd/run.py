"""``gateway run``: the gateway's core: poll every bus, journal, answer ``gateway status``.

::

    gateway run --config FILE [--store PATH] [--socket PATH] [--interval SECONDS] [--no-uplink]

SIGTERM or SIGINT stops it cleanly: the buses finish the job in hand, the store
commits what is queued and records the stop.  The journal goes to the configured MQTT
broker (:mod:`gateway.uplink`) unless ``--no-uplink``.  One log line per event on stderr, a
traceback included (under journald without the timestamp, which the journal adds).

Under systemd (``Type=notify``) it says READY=1 once started and STOPPING=1 when told
to stop; with ``WatchdogSec=`` the main loop sends WATCHDOG=1 every half period, but only
while :meth:`~gateway.runtime.Runtime.healthy` says every bus thread and the store
writer are alive: a dead thread stops the pings and systemd restarts the gateway.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.runtime import Runtime
    from gateway.sdnotify import Notifier

__all__ = ["OneLineFormatter", "configure", "run", "supervise"]


def configure(parser: argparse.ArgumentParser) -> None:
    from gateway.status import DEFAULT_SOCKET

    parser.add_argument("--config", required=True, metavar="FILE", help="gateway configuration")
    parser.add_argument("--store", metavar="PATH", help="SQLite store (default: the config's)")
    parser.add_argument(
        "--socket", default=DEFAULT_SOCKET, metavar="PATH", help=f"status socket ({DEFAULT_SOCKET})"
    )
    parser.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="seconds between polls of a meter; 0: as fast as the line allows "
        "(overrides the config's polling.interval_s)",
    )
    parser.add_argument(
        "--fail-after",
        type=int,
        metavar="N",
        help="failed polls before a meter is flagged (overrides polling.fail_after)",
    )
    parser.add_argument(
        "--backoff",
        type=float,
        metavar="SECONDS",
        help="first re-probe delay of a flagged meter, doubling (overrides polling.backoff_s)",
    )
    parser.add_argument(
        "--no-uplink",
        action="store_true",
        help="do not publish to the configured MQTT broker (the journal keeps everything)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    from gateway.config import load_config
    from gateway.poller import PollSettings
    from gateway.runtime import Runtime
    from gateway.sdnotify import Notifier

    journald = bool(os.environ.get("JOURNAL_STREAM"))
    stream = logging.StreamHandler()
    stream.setFormatter(
        OneLineFormatter(
            ("" if journald else "%(asctime)s ") + "%(levelname)s %(name)s: %(message)s"
        )
    )
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[stream])
    notifier = Notifier.from_environ()
    config = load_config(args.config)
    overrides = {
        "interval": args.interval,
        "fail_after": args.fail_after,
        "backoff_base": args.backoff,
    }
    settings = dataclasses.replace(
        PollSettings.from_config(config.polling),
        **{k: v for k, v in overrides.items() if v is not None},
    )
    stop = threading.Event()
    reason = ["stop"]

    def on_signal(signum: int, frame: FrameType | None) -> None:
        reason[0] = signal.Signals(signum).name
        stop.set()

    def on_thread_death(death: threading.ExceptHookArgs) -> None:
        # instead of Python's multi-line print to stderr: one log line
        if issubclass(death.exc_type, SystemExit):
            return
        logging.getLogger("gateway").error(
            "thread %s ended by an uncaught %s",
            death.thread.name if death.thread is not None else "?",
            death.exc_type.__name__,
            exc_info=death.exc_value if death.exc_value is not None else False,
        )

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    previous_hook, threading.excepthook = threading.excepthook, on_thread_death
    try:
        runtime = Runtime(
            config,
            store_path=args.store,
            settings=settings,
            status_socket=args.socket,
            calendar=True,
            uplink=not args.no_uplink,
            charging=any(a.tariff is not None for a in config.accounts)
            or config.billing.vacancy_tariff is not None,
        )
        runtime.start()
        try:
            notifier.ready(f"polling {len(runtime.buses)} buses, {len(config.meters)} meters")
            supervise(runtime, notifier, stop)
            notifier.stopping(f"stopping ({reason[0]})")
        finally:
            runtime.stop(reason[0])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        threading.excepthook = previous_hook
        notifier.close()
    return 0


class OneLineFormatter(logging.Formatter):
    """One line per event, a traceback included (its lines joined by `` | ``)."""

    def format(self, record: logging.LogRecord) -> str:
        return " | ".join(line for line in super().format(record).splitlines() if line.strip())


def supervise(runtime: Runtime, notifier: Notifier, stop: threading.Event) -> None:
    """The main loop until ``stop`` is set: feed the watchdog while the runtime is healthy.

    Pings every :meth:`~gateway.sdnotify.Notifier.watchdog_period` (half the watchdog
    timeout); logs one line when the runtime turns unhealthy (and when it recovers).
    """
    log = logging.getLogger("gateway")
    period = notifier.watchdog_period()
    tick = 1.0 if period is None else min(1.0, period)
    next_ping = 0.0
    was_healthy = True
    while True:
        healthy = runtime.healthy()
        if healthy != was_healthy:
            was_healthy = healthy
            if healthy:
                log.info("healthy again: watchdog pings resume")
                notifier.status("running")
            else:
                log.error(
                    "unhealthy: a bus thread or the store writer stopped; watchdog pings stop"
                    + (" (systemd will restart the gateway)" if period is not None else "")
                )
                notifier.status("unhealthy: a bus thread or the store writer stopped")
        now = time.monotonic()
        if healthy and period is not None and now >= next_ping:
            notifier.watchdog()
            next_ping = now + period
        if stop.wait(tick):
            return
