"""``gateway master``: the master station's ingest, and what its store holds.

::

    gateway master run --db PATH --broker HOST:PORT [--prefix gw] [--share GROUP]
                       [--client-id ID] [-v]
    gateway master stats --db PATH
    gateway master balances --db PATH --gateway ID [--json]
    gateway master keys --out DIR [--force]
    gateway master command --broker HOST:PORT [--prefix gw] --gateway ID --key PRIVATE.pem
                           --kind KIND [--arg KEY=VALUE ...] [--text KEY=VALUE ...]
                           [--expires-in S] [--timeout S] [--json]

``run`` stores every gateway's batches once and acknowledges them on ``down/ack``
until SIGTERM or SIGINT; one log line per event on stderr.  It exits 1 if the store
fails (nothing more is acknowledged then).  ``stats`` prints, per gateway, its status,
epochs, batches and records stored, the command replies stored, when it was last
seen, and ``safe mode`` when its latest ``SAFE_MODE`` event entered safe mode (its store
was damaged at start) with no end after it.  ``balances`` prints, per account of one
gateway, the balance the ledger entries stored vouch for over its epochs, the gateway's
own (from zero after a damaged store), what a compensation must restore, and the times
of the last entry before the damage and of the latest (docs/safe-mode.md).

``keys`` writes the master's Ed25519 key pair for signed commands (private key mode
0600, never overwritten without ``--force``) and prints the public key as base64, the
value of a gateway's ``commands.public_key``.  ``command`` signs a command, publishes it
on the gateway's ``down/cmd`` and prints its reply from ``up/reply`` (one line, or
``--json``); exit 0 when applied, 1 refused or failed, 2 no reply in time or bad usage.

Test-only fault injection: ``GATEWAY_MASTER_STALL_AFTER_COMMIT=SECONDS`` makes ``run``
sleep after each round's commits, before acknowledging (the window a SIGKILL test aims
at).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
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
    b = sub.add_parser(
        "balances",
        help="per account of a gateway: the balance the stored ledger entries vouch for",
    )
    b.add_argument("--db", required=True, metavar="PATH", help="the master's SQLite store")
    b.add_argument("--gateway", required=True, metavar="ID", help="the gateway's id")
    b.add_argument("--json", action="store_true", help="print JSON")

    k = sub.add_parser("keys", help="write the master's Ed25519 key pair for signed commands")
    k.add_argument("--out", required=True, metavar="DIR", help="directory for the key files")
    k.add_argument("--force", action="store_true", help="replace an existing private key")
    c = sub.add_parser(
        "command",
        help="sign a command, send it to a gateway and print its reply",
        description="Values of --arg are integers, true/false, null, else text; --text is"
        " always text.  Money in 0.0001 yuan.  Kinds: " + ", ".join(_kind_names()),
    )
    c.add_argument("--broker", required=True, type=_broker, metavar="HOST:PORT", help="MQTT broker")
    c.add_argument("--prefix", default="gw", help="topic prefix (gw)")
    c.add_argument("--gateway", required=True, metavar="ID", help="the gateway's id")
    c.add_argument("--key", required=True, metavar="PRIVATE.pem", help="the master's private key")
    c.add_argument(
        "--kind", required=True, choices=_kind_names(), metavar="KIND", help="e.g. top-up"
    )
    c.add_argument(
        "--arg", action="append", default=[], type=_pair, metavar="KEY=VALUE", help="an argument"
    )
    c.add_argument(
        "--text",
        action="append",
        default=[],
        type=_pair,
        metavar="KEY=VALUE",
        help="a text argument",
    )
    c.add_argument(
        "--tariff",
        metavar="FILE.yaml",
        help="with --kind tariff: the version's arguments from a YAML file (one entry of the"
        " config's tariffs list)",
    )
    c.add_argument("--expires-in", type=int, default=300, metavar="S", help="validity (300 s)")
    c.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="wait for the reply (10)"
    )
    c.add_argument("--json", action="store_true", help="print the reply as JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "stats":
        return _stats(args)
    if args.action == "balances":
        return _balances(args)
    if args.action == "keys":
        return _keys(args)
    if args.action == "command":
        return _command(args)
    return _run(args)


def _kind_names() -> list[str]:
    from gateway.master.command import KIND_NAMES

    return list(KIND_NAMES)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def _value(text: str) -> int | bool | str | None:
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", text):  # "007" stays text: an id, not a number
        return int(text)
    return {"true": True, "false": False, "null": None}.get(text, text)


def _keys(args: argparse.Namespace) -> int:
    from gateway.commands.keys import write_key_pair

    try:
        pair = write_key_pair(args.out, overwrite=args.force)
    except FileExistsError as exc:
        print(f"gateway master keys: {exc.filename} exists (--force replaces it)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gateway master keys: {exc}", file=sys.stderr)
        return 2
    print(f"private key: {pair.private_path} (keep it secret; mode 0600)", file=sys.stderr)
    print(f"public key:  {pair.public_path}", file=sys.stderr)
    print("gateway config: commands: {public_key: <the line below>}", file=sys.stderr)
    print(pair.public_base64)
    return 0


def _command(args: argparse.Namespace) -> int:
    import json

    from gateway.commands.keys import load_private_key
    from gateway.errors import GatewayError
    from gateway.master.command import (
        KIND_NAMES,
        build_command,
        send_command,
        tariff_file_args,
    )
    from gateway.protocols.command import ArgValue, ReasonCode, ReplyStatus

    if not 0 < args.expires_in <= 86_400:
        print("gateway master command: --expires-in must be 1..86400 s", file=sys.stderr)
        return 2
    values: dict[str, ArgValue] = {key: _value(value) for key, value in args.arg}
    values.update(dict(args.text))
    host, port = args.broker
    try:
        if args.tariff:  # the file's version, then any --arg / --text on top
            values = {**tariff_file_args(args.tariff), **values}
        key = load_private_key(args.key)
        cmd = build_command(
            args.gateway, KIND_NAMES[args.kind], values, key, expires_in_s=args.expires_in
        )
        reply = send_command(host, port, args.prefix, cmd, timeout=args.timeout)
    except GatewayError as exc:
        print(f"gateway master command: {exc}", file=sys.stderr)
        return 2
    ident = cmd.command_id.hex()
    if reply is None:
        print(f"gateway master command: no reply to {ident} in {args.timeout:g} s", file=sys.stderr)
        return 2
    status = ReplyStatus(reply.status).name
    reason = reply.reason.name if isinstance(reply.reason, ReasonCode) else str(reply.reason)
    if args.json:
        doc = {
            "command_id": ident,
            "kind": args.kind,
            "status": status,
            "reason": reason,
            "text": reply.text,
            "result": reply.result,
        }
        print(json.dumps(doc, default=_jsonable, sort_keys=True))
    else:
        line = f"{status} {args.kind} {ident}"
        if reply.status != ReplyStatus.OK:
            line += f" {reason}"
        if reply.text:
            line += f": {reply.text}"
        fields = " ".join(
            f"{k}={json.dumps(v, default=_jsonable)}" for k, v in reply.result.items()
        )
        print(f"{line} {fields}".rstrip())
    return 0 if reply.status == ReplyStatus.OK else 1


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


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
    header += ("events", "ledger", "tasks", "health", "replies", "last seen (UTC)", "mode")
    table: list[tuple[str, ...]] = [header] + [
        (
            r.gateway_id,
            r.status or "-",
            *(str(n) for n in (r.epochs, r.batches, r.readings, r.events, r.ledger)),
            *(str(n) for n in (r.tasks, r.health, r.replies)),
            _stamp(r.last_seen_ms),
            "safe mode" if r.safe_mode else "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
    out.write(f"{len(rows)} gateways; {len(rejected)} rejected messages\n")
    return 0


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _balances(args: argparse.Namespace) -> int:
    import json

    from gateway.master.store import MasterStore
    from gateway.store.store import wall_ms

    with MasterStore.open(args.db, now_ms=wall_ms, readonly=True) as store:
        known = any(r.gateway_id == args.gateway for r in store.summary())
        safe = store.safe_mode(args.gateway)
        rows = store.balances(args.gateway)
    if not known:
        print(f"gateway master balances: no gateway {args.gateway!r} in {args.db}", file=sys.stderr)
        return 2
    if args.json:
        doc = {
            "gateway": args.gateway,
            "safe_mode": None
            if safe is None
            else {
                "on": safe.on,
                "since_ms": safe.since_ms,
                "reason": safe.reason,
                "epoch": safe.epoch,
                "ts_ms": safe.ts_ms,
            },
            "accounts": {
                r.account: {
                    "vouched": r.vouched,
                    "gateway": r.gateway,
                    "restore": r.restore,
                    "before_ms": r.before_ms,
                    "last_ms": r.last_ms,
                    "entries": r.entries,
                }
                for r in rows
            },
        }
        print(json.dumps(doc, sort_keys=True))
        return 0
    out = sys.stdout
    if safe is None:
        out.write(f"gateway {args.gateway}: never reported safe mode\n")
    else:
        state = "SAFE MODE since" if safe.on else "safe mode ended, entered"
        out.write(f"gateway {args.gateway}: {state} {_iso(safe.since_ms)}: {safe.reason}\n")
    header = ("account", "vouched", "gateway", "restore", "before", "last", "entries")
    table: list[tuple[str, ...]] = [header] + [
        (
            r.account,
            *(str(n) for n in (r.vouched, r.gateway, r.restore)),
            _iso(r.before_ms),
            _iso(r.last_ms),
            str(r.entries),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
    out.write(
        f"{len(rows)} accounts; money in 0.0001 yuan; restore = vouched - gateway (send it as a"
        " top-up with entry=compensation, then relay-resume)\n"
    )
    return 0
