"""Collection tasks: daily and settlement freezes, load curves, back-fill (domain.md).

Start with :class:`TaskRunner` (:mod:`gateway.tasks.runner`); the freeze data and
settings are in :mod:`.model`, curves in :mod:`.curves`, the history search in
:mod:`.backfill`.  :func:`gateway.tasks.attach.attach` wires them and the meter time
sync into a started runtime.
"""

from gateway.tasks.backfill import Backfill
from gateway.tasks.curves import CurveBuilder, interpolate
from gateway.tasks.model import (
    FREEZE_DEPTH,
    SETTLEMENT_BLOCK_DI,
    Journal,
    TaskHistory,
    TaskMeter,
    TaskSettings,
    block_values,
    freeze_block_di,
    freeze_time_di,
    task_meters,
)
from gateway.tasks.runner import ObservedJournal, PollJournal, TaskRunner, TickThread

__all__ = [
    "FREEZE_DEPTH",
    "SETTLEMENT_BLOCK_DI",
    "Backfill",
    "CurveBuilder",
    "Journal",
    "ObservedJournal",
    "PollJournal",
    "TaskHistory",
    "TaskMeter",
    "TaskRunner",
    "TaskSettings",
    "TickThread",
    "block_values",
    "freeze_block_di",
    "freeze_time_di",
    "interpolate",
    "task_meters",
]
