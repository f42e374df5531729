"""The systemd notify protocol (``sd_notify``), without a dependency.

::

    notifier = Notifier.from_environ()     # disabled when not run by systemd
    notifier.ready("polling 2 buses")      # READY=1 + STATUS=...
    period = notifier.watchdog_period()    # half of WatchdogSec, or None
    notifier.watchdog()                    # WATCHDOG=1, every period while healthy
    notifier.stopping()                    # STOPPING=1

systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket) to a
``Type=notify`` service and ``$WATCHDOG_USEC`` (+ ``$WATCHDOG_PID``) when the unit has
``WatchdogSec=``.  Each message is one datagram of ``KEY=value`` lines.  A message that
cannot be sent is logged once and otherwise ignored: the gateway never stops for it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

_logger = logging.getLogger("gateway.sdnotify")


class Notifier:
    """Sends notify messages to ``address`` (None: every call does nothing)."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """From ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (``os.environ``).

        The watchdog is off when ``WATCHDOG_PID`` names another process, or when
        ``WATCHDOG_USEC`` is missing or not a positive integer.
        """
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID", "")
        if not pid or pid == str(os.getpid()):
            try:
                usec = int(env.get("WATCHDOG_USEC", ""))
            except ValueError:
                usec = None
        return cls(env.get("NOTIFY_SOCKET"), usec)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given (the process runs under systemd)."""
        return self.address is not None

    def watchdog_period(self) -> float | None:
        """Seconds between watchdog pings: half the watchdog timeout; None when off."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` as one datagram; True if sent (False when disabled or failed)."""
        if self.address is None or not lines:
            return False
        address = self.address
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), address)
        except OSError as exc:
            if not self._failed:
                _logger.warning("systemd notify socket %s: %s", self.address, exc)
                self._failed = True
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    return ("STATUS=" + " ".join(text.split()),)  # one line: a newline would end the field
