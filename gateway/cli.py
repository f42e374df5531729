"""Command line: ``gateway COMMAND ...``.

Commands are registered in :data:`COMMANDS` (name -> module, one-line help) and
imported lazily: ``gateway frame ...`` never imports the MQTT or Modbus stacks.  A
command module provides ``configure(parser)`` and ``run(args) -> int``.

Any :class:`~gateway.errors.GatewayError` ends the command with a one-line message
on stderr and exit status 2 (a :class:`~gateway.errors.ConfigError`: one line per
mistake in the file, each with its file, line and column).  So does bad usage (a
missing or unknown argument, an invalid choice), for every command and sub-command:
one line,
``gateway <cmd>: error: <what>``, not argparse's usage block (``--help`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from gateway import __version__
from gateway.errors import ConfigError, GatewayError

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("gateway.cmd.demo", "run the demo on embedded defaults"),
    "config": ("gateway.cmd.config", "check a configuration file"),
    "profile": ("gateway.cmd.profiles", "list, show and plan Modbus meter profiles"),
    "frame": ("gateway.cmd.frame", "decode and encode DL/T 645-2007 frames"),
    "sim": ("gateway.cmd.sim", "run simulated RS-485 buses of meters on pseudo-terminals"),
    "doctor": ("gateway.cmd.doctor", "show the installation: fast path, versions"),
    "run": ("gateway.cmd.run", "run the gateway: poll every bus, journal, answer status"),
    "status": ("gateway.cmd.status", "ask a running gateway for its buses and meters"),
    "master": (
        "gateway.cmd.master",
        "the master station: ingest, what it stored, command keys, signed commands",
    ),
    "meter": ("gateway.cmd.meter", "meter work orders: remove, replace, CT change, dead, confirm"),
}


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit status 2.

    Sub-parsers (``add_subparsers``, in the command modules too) are of the same class.
    argparse reports unrecognized arguments from the top parser; ``command_prog`` (the
    selected command's prog) names the command in that message instead.
    """

    command_prog: str | None = None

    def error(self, message: str) -> NoReturn:
        what = " ".join(message.split())
        prog = self.prog
        if self.command_prog and what.startswith("unrecognized arguments"):
            prog = self.command_prog
        self.exit(2, f"{prog}: error: {what}\n")


def _parser(selected: str | None) -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="gateway",
        description="Edge gateway for electricity concentrators, and its master station.",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = importlib.import_module(module_name)
            module.configure(p)
            p.set_defaults(_run=module.run)
            parser.command_prog = p.prog
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_list if not a.startswith("-")), None)
    args = _parser(selected if selected in COMMANDS else None).parse_args(args_list)
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:  # every mistake, one line each, as `config check` prints them
        for error in exc.errors:
            print(f"gateway {args.command}: {error}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
