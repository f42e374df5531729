"""``gateway doctor``: what is installed and which fast path is active.

The compiled fast path is active only when it loads and offers everything its pure
twin does (the rating kernel ``rate_batch`` included); otherwise the reason is shown,
and ``--require-compiled`` exits 1 (CI: ``scripts/test``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata

from gateway import fastpath

DEPENDENCIES = (
    "pymodbus",
    "pyserial",
    "paho-mqtt",
    "construct",
    "PyYAML",
    "sqlite-utils",
    "cbor2",
    "cryptography",
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--require-compiled",
        action="store_true",
        help="exit 1 unless the compiled fast path is the one loaded (CI uses this)",
    )


def report() -> dict[str, object]:
    versions = {}
    for name in DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "fastpath": fastpath.IMPLEMENTATION,
        "fastpath_module": fastpath.engine.__file__,
        "fastpath_reason": fastpath.UNAVAILABLE_REASON,
        "fastpath_kernel": "rate_batch" if hasattr(fastpath.engine, "rate_batch") else None,
        "dependencies": versions,
    }


def run(args: argparse.Namespace) -> int:
    info = report()
    if args.json:
        print(json.dumps(info))
    else:
        print(f"python       {info['python']} ({info['machine']})")
        line = f"fast path    {info['fastpath']}  {info['fastpath_module']}"
        if info["fastpath_reason"]:
            line += f"  ({info['fastpath_reason']})"
        print(line)
        for name, version in info["dependencies"].items():  # type: ignore[attr-defined]
            print(f"{name:<13}{version or 'MISSING'}")
    if args.require_compiled and info["fastpath"] != "compiled":
        print(f"compiled fast path not loaded: {info['fastpath_reason']}", file=sys.stderr)
        return 1
    return 0
