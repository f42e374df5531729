"""``gateway profile``: list, show and plan Modbus meter profiles."""

from __future__ import annotations

import argparse
from dataclasses import fields

from gateway.drivers import profiles
from gateway.drivers.profiles import Profile
from gateway.errors import ProfileError
from gateway.protocols.linetiming import LineSettings
from gateway.protocols.modbus_plan import plan_one_per_register, plan_reads
from gateway.protocols.quantities import UNITS

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile-file",
        action="append",
        default=[],
        metavar="PATH",
        help="also register this profile YAML file (repeatable)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="one line per registered profile")
    show = sub.add_parser("show", help="fields, registers and relay of a profile")
    show.add_argument("name")
    plan = sub.add_parser("plan", help="the read requests of one poll and their bus time")
    plan.add_argument("name")
    plan.add_argument("--baud", type=int, default=9600)
    plan.add_argument("--parity", choices=("N", "E", "O"), default="N")
    plan.add_argument("--stop-bits", type=int, choices=(1, 2), default=1)
    plan.add_argument(
        "--turnaround-ms",
        type=float,
        default=None,
        help="meter turnaround (default: the profile's hint)",
    )


def _list() -> None:
    for name in profiles.names():
        p = profiles.get(name)
        relay = "relay" if p.relay else "no relay"
        count = f"{len(p.registers):>2} registers"
        print(f"{name:<10} FC{p.function_code:02d} {count}  {relay:<8}  {p.description}")


def _show(p: Profile) -> None:
    docs = {f.name: f.metadata.get("doc", "") for f in fields(Profile)}
    for key in ("name", "manufacturer", "model", "function_code", "max_registers", "word_order"):
        value = getattr(p, key)
        print(f"{key:<14} {getattr(value, 'value', value)!s:<22} # {docs[key]}")
    print(f"{'turnaround_ms':<14} {p.turnaround_ms!s:<22} # {docs['turnaround_ms']}")
    if p.relay is None:
        print(f"{'relay':<14} {'none':<22} # {docs['relay']}")
    else:
        r = p.relay
        values = f"on {r.on_value:#06x}, off {r.off_value:#06x}"
        print(f"{'relay':<14} {r.kind} 0x{r.address:04X}: {values}")
    print(f"{'source':<14} {p.source}")
    if p.notes:
        print(f"{'notes':<14} {p.notes}")
    print()
    print(f"{'address':<9}{'quantity':<16}{'type':<9}{'scale':<8}{'unit':<6}-> unit  factor")
    for reg in sorted(p.registers, key=lambda r: r.address):
        print(
            f"0x{reg.address:04X}   {reg.quantity.name:<16}{reg.type.value:<9}{reg.scale!s:<8}"
            f"{reg.unit:<6}-> {UNITS[reg.quantity]:<6}x{reg.factor}"
        )


def _plan(p: Profile, args: argparse.Namespace) -> None:
    try:
        line = LineSettings(baud=args.baud, parity=args.parity, stop_bits=args.stop_bits)
        line.char_bits  # noqa: B018 - validates the framing now
    except ValueError as exc:
        raise ProfileError(str(exc)) from exc
    turnaround_ms = p.turnaround_ms if args.turnaround_ms is None else args.turnaround_ms
    turnaround = turnaround_ms / 1000
    plan = plan_reads(p.registers, line, turnaround=turnaround, max_registers=p.max_registers)
    naive = plan_one_per_register(p.registers, line, turnaround=turnaround)
    print(
        f"{p.name}: {len(p.registers)} registers, FC{p.function_code:02d}, "
        f"{args.baud} 8{args.parity}{args.stop_bits}, turnaround {turnaround_ms:g} ms, "
        f"t3.5 {line.modbus_gap * 1000:.2f} ms, at most {p.max_registers} registers a request"
    )
    for r in plan.requests:
        served = " ".join(reg.quantity.name for reg in r.registers)
        print(f"  read 0x{r.start:04X} x{r.count:<3} {r.time * 1000:8.2f} ms  {served}")
    saved = 1 - plan.total_time / naive.total_time
    print(
        f"planned: {_requests(len(plan.requests))}, {plan.total_time * 1000:.2f} ms; "
        f"one per register: {_requests(len(naive.requests))}, {naive.total_time * 1000:.2f} ms "
        f"({saved:.0%} saved)"
    )


def _requests(n: int) -> str:
    return f"{n} request" if n == 1 else f"{n} requests"


def run(args: argparse.Namespace) -> int:
    for path in args.profile_file:
        profiles.register_file(path)
    if args.action == "list":
        _list()
    elif args.action == "show":
        _show(profiles.get(args.name))
    else:
        _plan(profiles.get(args.name), args)
    return 0
