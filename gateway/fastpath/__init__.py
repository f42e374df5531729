"""Prepaid fast path: the compiled module when it loads, else its pure-Python twin.

``GATEWAY_FASTPATH=pure`` forces the twin.  ``IMPLEMENTATION`` says which is active
and ``UNAVAILABLE_REASON`` why the compiled one is not (``gateway doctor`` prints both).
The compiled module must offer everything the twin does: a stale build (from an older
``_engine.pyx``) is refused with the reason.  ``rate_batch`` is the rating kernel (its
arrays in ``layout.py``); :class:`gateway.charging.fast.BatchRater` drives it.
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
    "evaluate_state",
    "load",
    "posted_charge",
    "rate_batch",
]


def load(kind: str | None = None) -> tuple[ModuleType, str, str | None]:
    """Return (module, "compiled" | "pure", reason the compiled one is not used)."""
    kind = kind or os.environ.get("GATEWAY_FASTPATH", "auto")
    if kind == "pure":
        return _engine_py, "pure", "forced by GATEWAY_FASTPATH=pure"
    try:
        _engine = importlib.import_module("gateway.fastpath._engine")
        missing = [name for name in _engine_py.__all__ if not hasattr(_engine, name)]
        if missing:  # built from an older _engine.pyx: rebuild (scripts/setup does)
            raise ImportError(f"compiled module is stale, it lacks {', '.join(missing)}")
    except ImportError as exc:
        if kind == "compiled":
            raise
        return _engine_py, "pure", f"compiled module did not load: {exc}"
    return _engine, "compiled", None


engine, IMPLEMENTATION, UNAVAILABLE_REASON = load()
cumulative_cost = engine.cumulative_cost
posted_charge = engine.posted_charge
charge_batch = engine.charge_batch
rate_batch = engine.rate_batch
evaluate_state = engine.evaluate_state
