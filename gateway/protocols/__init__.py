"""Sans-IO codecs: bytes in, typed events out; events in, bytes out.

Nothing here does I/O or imports from the rest of the package (design.md).
"""

from gateway.protocols.errors import (
    GatewayError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)

__all__ = ["GatewayError", "LocalProtocolError", "ProtocolError", "RemoteProtocolError"]
