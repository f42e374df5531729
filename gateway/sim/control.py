"""The simulator's control interface: a Unix socket taking JSON lines.

Each request is one JSON object on one line; each answer is one JSON object on one
line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.  Operations:

=============  ================================================================
``ping``       ``{"op": "ping"}`` -> pid
``truth``      ``{"op": "truth"[, "meter": id]}`` -> meters' truth, buses, areas
``state``      ``{"op": "state"}`` -> what the state file holds
``fault``      ``{"op": "fault", "meter": id, "kind": silent|late|bad_checksum|
               garbage|wrong_address[, "seconds": s][, "delay_ms": ms]}``
``bus_silent`` ``{"op": "bus_silent", "bus": name[, "seconds": s]}``
``clear``      ``{"op": "clear"[, "meter": id][, "bus": name]}`` (neither: all)
``meter``      ``{"op": "meter", "meter": id, "action": button|swap|drift|relay|
               set_protect, "args": {...}}``
``log``        ``{"op": "log", "bus": name[, "since": n][, "limit": n]}`` -> entries
               numbered ``since`` on, and ``next`` (the number to ask from next)
``counters``   ``{"op": "counters"}`` -> each bus's counters
=============  ================================================================

:func:`request` is the client side (``gateway sim ctl``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import TransportError
from gateway.sim.bus import entry_dict

if TYPE_CHECKING:
    from gateway.sim.service import Simulator

__all__ = ["MAX_LINE", "ControlServer", "handle", "request"]

MAX_LINE = 1 << 20
"""Longest request line accepted (bytes)."""


def _need(req: dict[str, Any], key: str) -> Any:
    if key not in req:
        raise ValueError(f"missing {key!r}")
    return req[key]


def _seconds(req: dict[str, Any]) -> float | None:
    value = req.get("seconds")
    return None if value is None else float(value)


def _op_log(sim: Simulator, req: dict[str, Any]) -> dict[str, Any]:
    bus = sim.bus(str(_need(req, "bus")))
    limit = req.get("limit", 10_000)
    entries, nxt = bus.log_since(int(req.get("since", 0)), None if limit is None else int(limit))
    return {"entries": [entry_dict(e) for e in entries], "next": nxt}


def _op_fault(sim: Simulator, req: dict[str, Any]) -> dict[str, Any]:
    delay = req.get("delay_ms")
    faults = sim.fault(
        str(_need(req, "meter")),
        str(_need(req, "kind")),
        seconds=_seconds(req),
        delay_ms=None if delay is None else float(delay),
    )
    return {"faults": faults}


def _op_clear(sim: Simulator, req: dict[str, Any]) -> dict[str, Any]:
    meter, bus = req.get("meter"), req.get("bus")
    sim.clear(None if meter is None else str(meter), None if bus is None else str(bus))
    return {}


def _op_bus_silent(sim: Simulator, req: dict[str, Any]) -> dict[str, Any]:
    sim.bus_silent(str(_need(req, "bus")), _seconds(req))
    return {}


def _op_meter(sim: Simulator, req: dict[str, Any]) -> dict[str, Any]:
    args = req.get("args") or {}
    if not isinstance(args, dict):
        raise ValueError("'args' must be an object")
    result = sim.control(str(_need(req, "meter")), str(_need(req, "action")), args)
    return {"result": result}


_OPS: dict[str, Callable[[Simulator, dict[str, Any]], dict[str, Any]]] = {
    "ping": lambda sim, req: {"pid": os.getpid()},
    "truth": lambda sim, req: sim.truth(None if req.get("meter") is None else str(req["meter"])),
    "state": lambda sim, req: sim.state(),
    "counters": lambda sim, req: {
        "buses": {name: bus.counters.as_dict() for name, bus in sim.buses.items()}
    },
    "fault": _op_fault,
    "bus_silent": _op_bus_silent,
    "clear": _op_clear,
    "meter": _op_meter,
    "log": _op_log,
}


def handle(sim: Simulator, line: bytes | str) -> dict[str, Any]:
    """Answer one request line (never raises)."""
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return {"ok": False, "error": f"not JSON: {exc}"}
    if not isinstance(req, dict):
        return {"ok": False, "error": "a request is a JSON object"}
    op = req.get("op")
    fn = _OPS.get(op) if isinstance(op, str) else None
    if fn is None:
        return {"ok": False, "error": f"unknown op {op!r}; one of {', '.join(sorted(_OPS))}"}
    try:
        return {"ok": True, **fn(sim, req)}
    except KeyError as exc:
        return {"ok": False, "error": str(exc.args[0]) if exc.args else "not found"}
    except (ValueError, TypeError) as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # a bug must not kill the control thread
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(MAX_LINE + 1)
            if not line:
                return
            if len(line) > MAX_LINE:
                answer: dict[str, Any] = {"ok": False, "error": "request line too long"}
            elif not line.strip():
                continue
            else:
                answer = handle(self.server.sim, line)
            self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")
            self.wfile.flush()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    sim: Simulator


class ControlServer:
    """The control socket of one simulator; ``start()`` and ``stop()``."""

    def __init__(self, sim: Simulator, path: str | os.PathLike[str]) -> None:
        self.sim = sim
        self.path = Path(path)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise TransportError(f"{self.path} exists and is not a socket")
            self.path.unlink()  # a stale socket of a simulator that died
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = _Server(str(self.path), _Handler)
        except OSError as exc:
            raise TransportError(f"cannot listen on {self.path}: {exc}") from exc
        server.sim = self.sim
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="sim-control"
        )
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._server = None


def request(path: str | os.PathLike[str], req: dict[str, Any], timeout: float = 10.0) -> Any:
    """Send one request to a simulator's control socket and return its answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(os.fspath(path))
            s.sendall(json.dumps(req).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise TransportError(f"simulator control {os.fspath(path)}: {exc}") from exc
    if not data:
        raise TransportError(f"simulator control {os.fspath(path)}: no answer")
    return json.loads(data)
