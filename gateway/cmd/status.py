"""``gateway status``: ask a running gateway (its local Unix socket) how it is doing.

::

    gateway status [--socket PATH] [--json]

Prints the buses (transactions, efficiency, errors), the flagged meters with their
cause hints, the readings stored and, with relay control, the relays: per account its
balance, prepaid state, tripped or not, protect, hold or quiet delay, its meters' relay
positions; the storm guard; alarms.  Exit status 2 if no gateway answers.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    from gateway.status import DEFAULT_SOCKET

    parser.add_argument(
        "--socket", default=DEFAULT_SOCKET, metavar="PATH", help=f"status socket ({DEFAULT_SOCKET})"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")


def run(args: argparse.Namespace) -> int:
    from gateway.status import format_status, query

    answer = query(args.socket)
    if args.json:
        print(json.dumps(answer, indent=1, default=str))
    elif isinstance(answer, dict) and "error" in answer and len(answer) == 1:
        print(f"gateway status: {answer['error']}")
        return 1
    else:
        print(format_status(answer))
    return 0
