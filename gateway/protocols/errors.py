"""Root of the gateway's exception tree, and the protocol errors.

The root lives here, not in ``gateway/errors.py``, because ``protocols/`` imports
nothing from the rest of the package (design.md) yet its errors belong to the one
tree.  ``gateway/errors.py`` re-exports everything below and draws the whole tree.
"""

from __future__ import annotations

__all__ = ["GatewayError", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class GatewayError(Exception):
    """Base of every error the gateway and the master station raise on purpose."""


class ProtocolError(GatewayError):
    """A codec could not do its job."""


class RemoteProtocolError(ProtocolError):
    """Bytes or a message from a peer are malformed (bad checksum, truncated, unknown)."""


class LocalProtocolError(ProtocolError):
    """We were asked to build something the protocol cannot carry (value out of range)."""
