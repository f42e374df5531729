"""The master station: ingest of the gateways' batches into a central SQLite store.

:class:`MasterStore` (:mod:`gateway.master.store`) is the store;
:class:`Master` (:mod:`gateway.master.ingest`) subscribes to the gateways' uplinks,
stores each batch once and acknowledges on ``down/ack``.  Shares only
``gateway.protocols`` (and the SQLite helpers of ``gateway.store.db``) with the gateway.
"""

from gateway.master.ingest import IngestStats, Master
from gateway.master.store import MAX_MISSING, GatewaySummary, MasterStore, Stored

__all__ = ["MAX_MISSING", "GatewaySummary", "IngestStats", "Master", "MasterStore", "Stored"]
