"""The master's side of commands: build and sign one, send it, wait for its reply.

::

    key = load_private_key("keys/master-command.key")
    cmd = build_command("gw-01", CommandKind.TOP_UP, {"account": "A", "amount": 1_000_000},
                        key, expires_in_s=300)
    reply = send_command("localhost", 1883, "gw", cmd, timeout=10)   # None: no reply in time

:func:`send_command` connects with a fresh client id (clean session), subscribes to
the gateway's ``up/reply`` first (waiting for the SUBACK, so the reply cannot slip by),
publishes the command on ``down/cmd`` at QoS 1 and waits for the reply that names its
id; replies to other commands are ignored.  The gateway must be connected, or connect
while the master waits: the broker keeps a QoS 1 command for the gateway's
persistent session, and the gateway judges its expiry when it gets it.
"""

from __future__ import annotations

import queue
import secrets
import time
from collections.abc import Mapping

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from gateway.commands.keys import sign
from gateway.errors import GatewayError, UplinkError
from gateway.protocols.command import (
    ArgValue,
    Command,
    CommandKind,
    CommandReply,
    decode_reply,
    encode_command,
    new_command_id,
)
from gateway.protocols.topics import QOS, command_topic, reply_topic

__all__ = ["KIND_NAMES", "build_command", "send_command", "tariff_file_args"]

KIND_NAMES: dict[str, CommandKind] = {
    kind.name.lower().replace("_", "-"): kind for kind in CommandKind
}
"""Command kinds by their CLI names: ``top-up``, ``relay-test``, ``time-set`` ..."""


def build_command(
    gateway_id: str,
    kind: CommandKind,
    args: Mapping[str, ArgValue],
    key: Ed25519PrivateKey,
    *,
    expires_in_s: int = 300,
    now_ms: int | None = None,
) -> Command:
    """A new command (fresh id, issued now by the master's clock), signed with ``key``."""
    issued = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    cmd = Command(
        command_id=new_command_id(),
        gateway_id=gateway_id,
        issued_at_ms=issued,
        expires_at_ms=issued + expires_in_s * 1000,
        kind=kind,
        args=dict(args),
    )
    return sign(cmd, key)


def send_command(
    host: str,
    port: int,
    prefix: str,
    cmd: Command,
    *,
    timeout: float = 10.0,
    client_id: str | None = None,
    to: str | None = None,
) -> CommandReply | None:
    """Publish ``cmd`` and return the gateway's reply, or None after ``timeout`` s.

    ``to``: the gateway whose topics are used (default: the one ``cmd`` names).

    UplinkError if the broker cannot be reached or refuses the subscription.
    """
    payload = encode_command(cmd)
    events: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"gateway-master-cmd-{secrets.token_hex(4)}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = lambda _c, _u, _f, rc, _p: events.put(("connack", rc))
    client.on_subscribe = lambda _c, _u, _m, rcs, _p: events.put(("suback", rcs))
    client.on_message = lambda _c, _u, msg: events.put(("message", bytes(msg.payload)))
    deadline = time.monotonic() + timeout
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ValueError) as exc:
        raise UplinkError(f"cannot connect to {host}:{port}: {exc}") from exc
    client.loop_start()
    try:
        gateway = cmd.gateway_id if to is None else to
        replies = reply_topic(prefix, gateway)
        while True:
            kind, value = _next(events, deadline)
            if kind == "timeout":
                return None
            if kind == "connack":
                if getattr(value, "is_failure", False):
                    raise UplinkError(f"the broker refused the connection: {value}")
                client.subscribe(replies, qos=QOS)
            elif kind == "suback":
                if any(getattr(r, "is_failure", False) for r in value):  # type: ignore[attr-defined]
                    raise UplinkError(f"the broker refused the subscription to {replies}")
                client.publish(command_topic(prefix, gateway), payload, qos=QOS)
            elif kind == "message":
                try:
                    reply = decode_reply(value)  # type: ignore[arg-type]
                except GatewayError:
                    continue  # not a reply we can read: not ours
                if reply.command_id == cmd.command_id:
                    return reply
    finally:
        client.loop_stop()
        client.disconnect()


def _next(events: queue.SimpleQueue[tuple[str, object]], deadline: float) -> tuple[str, object]:
    left = deadline - time.monotonic()
    if left <= 0:
        return ("timeout", None)
    try:
        return events.get(timeout=left)
    except queue.Empty:
        return ("timeout", None)


def tariff_file_args(path: str) -> dict[str, ArgValue]:
    """A TARIFF command's arguments from a YAML file holding one tariff version, written
    as in the configuration's ``tariffs`` list (``effective`` an ISO-8601 time with its
    offset) and checked by the same code: ConfigError (file:line:column) otherwise."""
    from gateway.config.model import FlatTariff, TieredTariff, TouTariff
    from gateway.config.sections import read_tariff
    from gateway.tariff_updates.versions import tariff_args
    from gateway.yamlloc import Reader, read_file

    text, name = read_file(path)
    reader = Reader(name)
    node = reader.compose(text)
    tariff = read_tariff(reader, node)[0] if node is not None else None
    reader.check()
    assert isinstance(tariff, FlatTariff | TouTariff | TieredTariff)
    return tariff_args(tariff)
