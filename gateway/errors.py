"""The gateway's one exception tree.

::

    GatewayError                      (root; gateway/protocols/errors.py)
    ├── ProtocolError                 codecs (sans-IO)
    │   ├── RemoteProtocolError       a peer sent bytes we cannot decode
    │   │   ├── WrongAddress          another meter replied (gateway/drivers/base.py)
    │   │   ├── UnknownDataId         DI not in the table (gateway/protocols/dlt645/dataids.py)
    │   │   └── ModbusExceptionReply  a Modbus exception reply (gateway/protocols/modbus.py)
    │   └── LocalProtocolError        we were asked to encode something invalid
    ├── ConfigError                   a configuration file is wrong (file, line, column)
    ├── ProfileError                  a meter profile definition is wrong
    ├── TransportError                I/O with a bus or a broker failed
    │   ├── PortError                 a serial port cannot be opened or vanished
    │   ├── MeterTimeout              a meter did not answer in time
    │   └── UplinkError               the MQTT broker cannot be reached
    ├── StoreError                    SQLite failed
    │   └── StoreCorrupt              the store failed its integrity check
    ├── CommandRefused                a master command was refused (reason given)
    ├── LifecycleRefused              a meter/account change was refused (unknown, removed ...)
    ├── RatingError                   a reading the tariff refused: stored, not charged
    └── FrameInputError               `gateway frame` cannot use its input (gateway/cmd/frame.py)

A class drawn with a path is defined there (it belongs to that layer); the others are
defined here or in gateway/protocols/errors.py and exported by this module.
tests/test_errors.py checks the drawing against the classes: every GatewayError
subclass in the package is drawn, under its real parent.

Foreign errors (pyserial, pymodbus, sqlite3, paho) are mapped onto this tree at the
boundary where they occur, with the original kept as ``__cause__``
(``raise PortError(...) from exc``).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.protocols.errors import (
    GatewayError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)

__all__ = [
    "CommandRefused",
    "ConfigError",
    "GatewayError",
    "LifecycleRefused",
    "LocalProtocolError",
    "MeterTimeout",
    "PortError",
    "ProfileError",
    "ProtocolError",
    "RatingError",
    "RemoteProtocolError",
    "StoreCorrupt",
    "StoreError",
    "TransportError",
    "UplinkError",
]


class ConfigError(GatewayError):
    """A configuration file is wrong; the message names file, line and column.

    ``file``, ``line`` and ``column`` are 1-based and may be ``None`` when the
    problem has no single place (a missing file, say).  ``errors`` lists every
    problem found in the file in file order (just ``[self]`` when there was one).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        errors: Sequence[ConfigError] = (),
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.errors: list[ConfigError] = list(errors) or [self]
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


class ProfileError(GatewayError):
    """A meter profile definition is inconsistent (overlapping registers, bad type...)."""


class TransportError(GatewayError):
    """Talking to a bus or a broker failed."""


class PortError(TransportError):
    """A serial port cannot be opened, configured, or it vanished."""


class MeterTimeout(TransportError):
    """A meter did not answer within its timeout."""


class UplinkError(TransportError):
    """The MQTT broker cannot be reached or refused us."""


class StoreError(GatewayError):
    """The SQLite store failed."""


class StoreCorrupt(StoreError):
    """The store failed its integrity check at start."""


class CommandRefused(GatewayError):
    """A command from the master station was refused; ``reason`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class LifecycleRefused(GatewayError):
    """A meter lifecycle operation was refused (unknown or removed meter, a repeat ...)."""


class RatingError(GatewayError):
    """A reading could not be rated (the tariff refused it): stored, not charged."""
