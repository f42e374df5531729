"""The running gateway's status on a local Unix socket, one JSON object per line.

A client connects, may send one request line (``{"op": "status"}``; an empty line or
none means the same) and gets one line back: the status as JSON, or
``{"error": "..."}``.  :func:`query` is that client; :func:`format_status` renders the
answer for ``gateway status``.  The socket is created mode 0600 (it tells what is on
the buses; nothing more) and removed at stop.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import TransportError

__all__ = ["DEFAULT_SOCKET", "StatusServer", "format_status", "query", "relay_lines"]

DEFAULT_SOCKET = "/run/gateway/status.sock"
"""Where ``gateway run`` listens and ``gateway status`` asks, unless told otherwise."""


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.connection.settimeout(2.0)
        try:
            line = self.rfile.readline(4096).strip()
        except OSError:
            line = b""
        try:
            request = json.loads(line) if line else {"op": "status"}
            op = request.get("op", "status") if isinstance(request, dict) else None
            if op != "status":
                answer: object = {"error": f"unknown op {op!r}; known: status"}
            else:
                answer = self.server.provider()
        except ValueError as exc:
            answer = {"error": f"not JSON: {exc}"}
        except Exception as exc:  # the status must never kill the server
            answer = {"error": f"status failed: {exc}"}
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    provider: Callable[[], object]


class StatusServer:
    """Serves ``provider()`` on the Unix socket ``path`` from its own thread."""

    def __init__(self, path: str | Path, provider: Callable[[], object]) -> None:
        self.path = Path(path)
        self.provider = provider
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _alive(self.path):
                raise TransportError(f"{self.path}: another gateway answers on this socket")
            self.path.unlink()
        old = os.umask(0o177)
        try:
            server = _Server(str(self.path), _Handler)
        except OSError as exc:
            raise TransportError(f"cannot listen on {self.path}: {exc}") from exc
        finally:
            os.umask(old)
        server.provider = self.provider
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="status", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(OSError):
            self.path.unlink()


def _alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def query(path: str | Path, request: Mapping[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """Ask the gateway at ``path``; TransportError if nobody answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(json.dumps(dict(request or {"op": "status"})).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise TransportError(f"no gateway answers on {path}: {exc}") from exc
    try:
        return json.loads(data)
    except ValueError as exc:
        raise TransportError(f"{path}: not a JSON answer: {data[:80]!r}") from exc


def format_status(status: Mapping[str, Any]) -> str:
    """The status as a few human lines."""
    lines = [
        f"gateway {status.get('gateway_id')} {status.get('version', '')}  now {status.get('now')}"
        f"  time {'trusted' if status.get('time_trusted') else 'UNTRUSTED'}",
        f"readings stored: {status.get('readings_stored', 0)}",
    ]
    for bus in status.get("buses", []):
        poll = bus.get("poll", {})
        state = "up" if bus.get("up") else f"DOWN ({bus.get('port_error')})"
        lines.append(
            f"bus {bus['name']} {bus.get('protocol')} {bus.get('line')} {state}:"
            f" {bus.get('transactions', 0)} transactions, {bus.get('errors', 0)} errors,"
            f" efficiency {bus.get('efficiency', 0):.3f}, {poll.get('readings', 0)} readings,"
            f" {len(poll.get('flagged', []))}/{poll.get('meters', 0)} meters flagged"
        )
        for f in poll.get("flagged", []):
            lines.append(
                f"  flagged {f['meter']}: {f['cause']} ({f['failures']} polls)"
                f" {f.get('error') or ''}"
            )
        for meter in poll.get("swapped", []):
            lines.append(f"  meter number changed: {meter} (unconfirmed)")
    store = status.get("store")
    if isinstance(store, Mapping):
        lines.append(
            f"store {store.get('path')}: {store.get('records_written')} records written,"
            f" {store.get('queue_depth')} queued" + (" FAILING" if store.get("failing") else "")
        )
    tasks = status.get("tasks")
    if isinstance(tasks, Mapping):
        today = tasks.get("today")
        if isinstance(today, Mapping):
            parts = [
                f"{kind} {entry.get('ok', 0) + entry.get('estimated', 0)}/{entry.get('expected')}"
                for kind, entry in today.items()
                if isinstance(entry, Mapping)
            ]
            lines.append(f"tasks {today.get('day')}: " + ", ".join(parts))
        else:
            lines.append("tasks: suspended until the time is trusted")
    relays = status.get("relays")
    if isinstance(relays, Mapping):
        lines += relay_lines(relays)
    for key, value in status.items():
        if key not in {
            "relays",
            "tasks",
            "gateway_id",
            "version",
            "now",
            "time_trusted",
            "readings_stored",
            "buses",
            "store",
        }:
            lines.append(f"{key}: {json.dumps(value, default=str)}")
    return "\n".join(lines)


def _yuan(amount: object) -> str:
    """A balance from the status JSON: 0.0001 yuan as exact text (anything else as is)."""
    from gateway.billing.money import yuan  # client side only: the gateway need not load billing

    return f"{yuan(amount)} yuan" if isinstance(amount, int) else str(amount)


def _utc(ts_ms: object) -> str:
    if not isinstance(ts_ms, int):
        return str(ts_ms)
    return datetime.fromtimestamp(ts_ms // 1000, UTC).isoformat()


def relay_lines(relays: Mapping[str, Any]) -> list[str]:
    """The relays section (:meth:`gateway.relays.RelayController.status`) as human lines:
    counters, each account (state, balance, tripped / due / protected / held / delayed,
    its meters' relay positions), the trip storm, alarms, commands in progress."""
    if "error" in relays and len(relays) == 1:
        return [f"relays: ERROR {relays['error']}"]
    lines = [
        f"relays: {relays.get('meters', 0)} meters with a relay, close mode"
        f" {relays.get('close_mode')}; {relays.get('trips', 0)} trips,"
        f" {relays.get('closes', 0)} closes, {relays.get('unconfirmed', 0)} unconfirmed,"
        f" {relays.get('resends', 0)} resends, {relays.get('quiet_delays', 0)} quiet delays"
    ]
    positions = relays.get("positions") or {}
    moving = relays.get("in_progress") or {}
    protect = set(relays.get("protect") or ())
    blocked = relays.get("blocked") or {}
    delayed = relays.get("delayed") or {}
    for account, info in (relays.get("accounts") or {}).items():
        meters = info.get("meters") or []
        where = [
            f"{m} {positions.get(m, 'unknown')}" + (f" ({moving[m]}ing)" if m in moving else "")
            for m in meters
        ]
        tripped = any(str(positions.get(m, "")).startswith("open") for m in meters)
        state = str(info.get("state", "")).replace("_", " ")
        notes = [state, "TRIPPED" if tripped else "not tripped" if meters else "no relay meter"]
        if not info.get("trips"):
            notes.append("does not trip on arrears")
        if account in protect:
            notes.append("protected")
        if account in blocked and blocked[account] != "protect":
            notes.append(f"held by {blocked[account]}")
        if account in delayed:
            notes.append(f"trip delayed to {delayed[account]}")
        lines.append(
            f"  account {account}: balance {_yuan(info.get('balance'))}, {', '.join(notes)}"
            + (f"; relays {', '.join(where)}" if where else "")
        )
    shown = {m for info in (relays.get("accounts") or {}).values() for m in info.get("meters", ())}
    others = [
        f"{m} {p}" + (f" ({moving[m]}ing)" if m in moving else "")
        for m, p in positions.items()
        if m not in shown and (str(p).startswith("open") or m in moving)
    ]
    if others:
        lines.append(f"  other relays: {', '.join(others)}")
    safe = relays.get("safe_mode")
    if safe:
        lines.append(
            f"  SAFE MODE since {_utc(safe.get('since_ms'))}: {safe.get('reason')}:"
            " no trips until the master sends relay-resume"
        )
    storm = relays.get("storm") or {}
    if storm.get("stopped"):
        lines.append(
            f"  TRIP STORM since {_utc(storm.get('since_ms'))}: tripping stopped"
            f" ({storm.get('recent', 0)} of {storm.get('accounts', 0)} accounts due recently)"
        )
    else:
        lines.append(
            f"  storm guard: {storm.get('recent', 0)} of {storm.get('accounts', 0)} accounts"
            " due recently, tripping on"
        )
    for alarm in relays.get("alarms") or []:
        detail = ", ".join(
            f"{k} {v}" for k, v in alarm.items() if k not in ("kind", "ts_ms") and v != ""
        )
        lines.append(f"  ALARM {alarm.get('kind')} at {_utc(alarm.get('ts_ms'))}: {detail}")
    return lines
