"""SQLite store: the journal (readings, events, task results, health), its writer
thread, retention and migrations.  Built on sqlite-utils; WAL; one writer thread.

Start with :class:`Store` (:mod:`gateway.store.store`).
"""

from gateway.store.db import Check
from gateway.store.journal import Entry, JournalReader, Kind, Record, StoreMeta
from gateway.store.retention import EVENT_READINGS_DROPPED, DroppedRange, RetentionResult
from gateway.store.store import OpenReport, Store, wall_ms
from gateway.store.writer import StoreWriter, WriterStats

__all__ = [
    "EVENT_READINGS_DROPPED",
    "Check",
    "DroppedRange",
    "Entry",
    "JournalReader",
    "Kind",
    "OpenReport",
    "Record",
    "RetentionResult",
    "Store",
    "StoreMeta",
    "StoreWriter",
    "WriterStats",
    "wall_ms",
]
