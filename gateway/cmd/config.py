"""``gateway config``: check a configuration file, or print the packaged example.

``gateway config check FILE...`` prints ``FILE: OK — ...`` per good file and every
problem of a bad one as ``file:line:column: message`` on stderr; exit status 2 if
any file is bad.  ``gateway config example`` prints the example configuration.
"""

from __future__ import annotations

import argparse
import sys

from gateway.config import example_config_path, load_config
from gateway.errors import ConfigError

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check", help="check configuration files", description="check configuration files"
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="a gateway YAML file")
    sub.add_parser(
        "example",
        help="print the example configuration",
        description="print the packaged example configuration (every key explained)",
    )


def run(args: argparse.Namespace) -> int:
    if args.config_command == "example":
        sys.stdout.write(example_config_path().read_text(encoding="utf-8"))
        return 0
    status = 0
    for name in args.files:
        try:
            cfg = load_config(name)
        except ConfigError as exc:
            for error in exc.errors:
                print(error, file=sys.stderr)
            status = 2
            continue
        counts = [
            _count(len(cfg.serial_buses), "bus", "buses"),
            _count(len(cfg.meters), "meter", "meters"),
            _count(len(cfg.accounts), "account", "accounts"),
            _count(len(cfg.tariffs), "tariff", "tariffs"),
        ]
        print(f"{name}: OK — {', '.join(counts)}")
    return status


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
