"""A serial port opened with pyserial, read and written without it.

pyserial opens and configures the device (baud rate, framing, an exclusive lock);
the bus then uses the file descriptor directly (``select`` and ``os.read``/``os.write``)
because changing pyserial's ``timeout`` per read reconfigures the port each time.
Every pyserial and OS error becomes a :class:`~gateway.errors.PortError` here, with
the original as its cause.

A Linux pseudo-terminal may refuse even or odd parity ("Invalid argument").  A port
that is a pty is then opened without parity and the fact is logged once per port:
the simulator on the other end times the line by its own configured framing, so
nothing else changes.  A real UART that refuses its framing is an error.
"""

from __future__ import annotations

import errno
import logging
import os
import select

from gateway.errors import PortError
from gateway.protocols.linetiming import LineSettings

__all__ = ["SerialPort", "is_pty"]

_logger = logging.getLogger(__name__)

_PTY_MAJORS = range(136, 144)
"""Unix98 pty slave device majors on Linux."""


def is_pty(path: str) -> bool:
    """Whether ``path`` (a link is followed) is a pseudo-terminal's slave side."""
    try:
        return os.major(os.stat(path).st_rdev) in _PTY_MAJORS
    except OSError:
        return False


class SerialPort:
    """One serial device: :meth:`open`, :meth:`write`, :meth:`wait_readable`,
    :meth:`read_available`, :meth:`close`.  Not thread-safe: its bus owns it."""

    def __init__(self, path: str, line: LineSettings) -> None:
        self.path = path
        self.line = line
        self.parity_fallback = False
        """True once the port had to be opened without parity (a pty)."""
        self._said_fallback = False
        self._serial: object | None = None
        self._fd = -1

    @property
    def is_open(self) -> bool:
        return self._fd >= 0

    def _make(self, parity: str) -> object:
        import serial

        line = self.line
        return serial.Serial(
            self.path,
            baudrate=line.baud,
            bytesize=line.data_bits,
            parity=parity,
            stopbits=line.stop_bits,
            timeout=0,
            exclusive=True,
        )

    def open(self) -> None:
        """Open and configure the device; PortError if it cannot be."""
        import termios

        import serial

        errors = (serial.SerialException, OSError, ValueError, termios.error)
        self.close()
        try:
            try:
                port = self._make(self.line.parity)
            except errors as exc:
                if self.line.parity == "N" or not is_pty(self.path):
                    raise
                port = self._make("N")
                self.parity_fallback = True
                if not self._said_fallback:
                    self._said_fallback = True
                    _logger.warning(
                        "%s is a pseudo-terminal that refuses parity %s (%s): opened without"
                        " parity; the peer times the line as configured",
                        self.path,
                        self.line.parity,
                        exc,
                    )
        except errors as exc:
            raise PortError(f"cannot open {self.path}: {exc}") from exc
        self._serial = port
        self._fd = port.fileno()  # type: ignore[attr-defined]
        os.set_blocking(self._fd, False)

    def close(self) -> None:
        port, self._serial, self._fd = self._serial, None, -1
        if port is not None:
            try:
                port.close()  # type: ignore[attr-defined]
            except Exception:
                _logger.debug("closing %s failed", self.path, exc_info=True)

    def fileno(self) -> int:
        if self._fd < 0:
            raise PortError(f"{self.path} is not open")
        return self._fd

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the device (all of it); PortError if it vanished."""
        fd = self.fileno()
        view = memoryview(data)
        try:
            while view:
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    select.select([], [fd], [], 1.0)
                    continue
                view = view[n:]
        except OSError as exc:
            raise PortError(f"write to {self.path} failed: {exc}") from exc

    def wait_readable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for bytes (or a hang-up) to read."""
        fd = self.fileno()
        try:
            ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        except (OSError, ValueError) as exc:
            raise PortError(f"{self.path}: {exc}") from exc
        return bool(ready)

    def read_available(self, *, ready: bool = False) -> bytes:
        """The bytes waiting now (maybe none); PortError if the device vanished.

        ``ready``: :meth:`wait_readable` just said so; no bytes then means a hang-up
        (with pyserial's VMIN=0 settings an idle read returns nothing, not EAGAIN).
        """
        fd = self.fileno()
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return b""
            raise PortError(f"read from {self.path} failed: {exc}") from exc
        if not data and ready:
            raise PortError(f"{self.path} hung up")
        return data
