"""Prepaid fast path: the compiled module when it loads, else its pure-Python twin.

``GATEWAY_FASTPATH=pure`` forces the twin.  ``IMPLEMENTATION`` says which is active
and ``UNAVAILABLE_REASON`` why the compiled one is not (``gateway doctor`` prints both).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from gateway.fastpath import _engine_py

__all__ = [
    "IMPLEMENTATION",
    "UNAVAILABLE_REASON",
    "charge_batch",
    "cumulative_cost",
    "engine",
    "load",
    "posted_charge",
]


def load(kind: str | None = None) -> tuple[ModuleType, str, str | None]:
    """Return (module, "compiled" | "pure", reason the compiled one is not used)."""
    kind = kind or os.environ.get("GATEWAY_FASTPATH", "auto")
    if kind == "pure":
        return _engine_py, "pure", "forced by GATEWAY_FASTPATH=pure"
    try:
        _engine = importlib.import_module("gateway.fastpath._engine")
    except ImportError as exc:
        if kind == "compiled":
            raise
        return _engine_py, "pure", f"compiled module did not load: {exc}"
    return _engine, "compiled", None


engine, IMPLEMENTATION, UNAVAILABLE_REASON = load()
cumulative_cost = engine.cumulative_cost
posted_charge = engine.posted_charge
charge_batch = engine.charge_batch
