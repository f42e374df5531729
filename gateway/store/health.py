"""Gateway health records the store writes about the gateway's own life.

Power records (:attr:`HealthKind.POWER`) carry ``event``: ``start``, ``stop`` or
``unclean_stop`` (the previous run never closed its store: power loss or a crash).
Storage records (:attr:`HealthKind.STORAGE`) carry ``event``: ``store_replaced``
(the store was damaged at start and moved aside) or ``usage``.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.protocols.batch import HealthKind, HealthRecord

__all__ = [
    "start_record",
    "stop_record",
    "storage_record",
    "store_replaced_record",
    "unclean_stop_record",
]


def start_record(ts_ms: int, info: Mapping[str, int | str] | None = None) -> HealthRecord:
    """The gateway started; ``info`` adds versions, time source and the like."""
    return HealthRecord(ts_ms, HealthKind.POWER, {"event": "start", **(info or {})})


def stop_record(ts_ms: int, reason: str = "stop") -> HealthRecord:
    """The gateway stopped cleanly (``reason``: stop, restart, upgrade ...)."""
    return HealthRecord(ts_ms, HealthKind.POWER, {"event": "stop", "reason": reason})


def unclean_stop_record(ts_ms: int, last_seen_ms: int | None) -> HealthRecord:
    """The previous run ended without closing the store; ``last_seen_ms``: its last record."""
    values: dict[str, int | str] = {
        "event": "unclean_stop",
        "detail": "power loss or crash detected",
    }
    if last_seen_ms is not None:
        values["last_seen_ms"] = last_seen_ms
    return HealthRecord(ts_ms, HealthKind.POWER, values)


def store_replaced_record(ts_ms: int, moved_to: str, damage: str) -> HealthRecord:
    """The store was damaged at start, moved to ``moved_to``, and a new one created."""
    values: dict[str, int | str] = {
        "event": "store_replaced",
        "moved_to": moved_to,
        "damage": damage[:500],
    }
    return HealthRecord(ts_ms, HealthKind.STORAGE, values)


def storage_record(
    ts_ms: int, used_bytes: int, file_bytes: int, unacknowledged_readings: int
) -> HealthRecord:
    """How much of the store is in use and how many readings await acknowledgement."""
    values: dict[str, int | str] = {
        "event": "usage",
        "used_bytes": used_bytes,
        "file_bytes": file_bytes,
        "unacknowledged_readings": unacknowledged_readings,
    }
    return HealthRecord(ts_ms, HealthKind.STORAGE, values)
