"""Money as text: amounts are integers of 0.0001 yuan everywhere; this writes them out."""

from __future__ import annotations

__all__ = ["yuan"]


def yuan(amount: int) -> str:
    """0.0001 yuan as text with four decimals, exactly (no float): ``-12345`` -> ``-1.2345``."""
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10_000)
    return f"{sign}{whole}.{frac:04d}"
