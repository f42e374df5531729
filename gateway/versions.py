"""What the gateway runs on, for its start record: its own version, Python's, SQLite's,
the serial, Modbus and MQTT libraries' and the fast path's build.

Library versions are read from the ``<name>-<version>.dist-info`` directory names on
``sys.path`` rather than through importlib.metadata, whose imports and look-ups cost
about 1.2 MB of RSS in a process that must stay under 40 MB while polling.
"""

from __future__ import annotations

import os
import sqlite3
import sys

from gateway import __version__

__all__ = ["dist_version", "versions"]

_DISTRIBUTIONS = {"pymodbus": "pymodbus", "pyserial": "pyserial", "paho_mqtt": "paho-mqtt"}
"""Start record key -> installed distribution whose version it carries."""


def dist_version(name: str) -> str:
    """An installed distribution's version, from its ``<name>-<version>.dist-info``
    directory on ``sys.path`` (what importlib.metadata reads, without the 1.2 MB its
    imports and look-ups cost); "absent" when it is not installed."""
    prefix = name.replace("-", "_").lower() + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for found in sorted(names):
            version = found[len(prefix) : -len(".dist-info")]
            if (
                found.endswith(".dist-info")
                and found.lower().startswith(prefix)
                and version[:1].isdigit()
            ):
                return version
    return "absent"


def versions(*, fastpath: bool = False) -> dict[str, str]:
    """What the start record says the gateway runs on: its own version, Python's,
    SQLite's, the serial, Modbus and MQTT libraries' (read without importing them), and
    the prepaid fast path's build (``compiled`` | ``pure``, and why when pure) when
    ``fastpath`` or already loaded (else ``unused``: nothing is charged)."""
    out = {
        "version": __version__,
        "python": ".".join(map(str, sys.version_info[:3])),
        "sqlite": sqlite3.sqlite_version,
    }
    for key, dist in _DISTRIBUTIONS.items():
        out[key] = dist_version(dist)
    out["fastpath"] = "unused"
    if fastpath or "gateway.fastpath" in sys.modules:
        from gateway import fastpath as fast

        out["fastpath"] = fast.IMPLEMENTATION
        if fast.UNAVAILABLE_REASON:
            out["fastpath_reason"] = fast.UNAVAILABLE_REASON[:200]
    return out
