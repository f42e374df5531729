"""Start and stop a private Mosquitto broker on a free loopback port.

Used by the demo (when no broker is given) and by the tests; never by a deployed
gateway, which is configured with its broker.  Mosquitto comes from Debian's
``mosquitto`` package (``scripts/setup`` installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from gateway.errors import UplinkError

__all__ = ["Mosquitto", "find_mosquitto", "free_port"]


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if found is None:
        raise UplinkError("mosquitto not found: install Debian's 'mosquitto' (scripts/setup does)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """A broker process: ``with Mosquitto() as broker: broker.port``.

    ``stop()`` and ``start()`` may be called repeatedly (outage tests); the port
    stays the same across restarts.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="gw-mosquitto-")
        self._proc: subprocess.Popen[bytes] | None = None
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self._dir.name}/mosquitto.log\n"
        )
        self._conf = conf

    @property
    def log_path(self) -> Path:
        return Path(self._dir.name) / "mosquitto.log"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        with socket.socket() as probe:
            # as Mosquitto does: connections the stopped broker closed (TIME_WAIT) must
            # not keep a restart off its port
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise UplinkError(
                    f"mosquitto cannot listen on {self.host}:{self.port}: {exc}"
                ) from exc
        self._proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self._conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # its own session: a Ctrl-C in the terminal goes to the demo (or test run),
            # which stops the broker when it is done with it, not to the broker too
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise UplinkError(f"mosquitto exited at start: {err.strip()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise UplinkError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout}s")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
