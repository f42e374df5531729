"""MQTT topic scheme: ``<prefix>/<gateway-id>/up/{batch,reply,status}`` and
``<prefix>/<gateway-id>/down/{cmd,ack}``.

Builders refuse a prefix or gateway id that would make a wrong topic
(LocalProtocolError); :func:`parse_topic` refuses any topic outside the scheme
(RemoteProtocolError).  The prefix may have several levels (``site/a``).
``up/status`` is retained and carries :data:`STATUS_ONLINE`; the gateway's last will
sets it to :data:`STATUS_OFFLINE`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from gateway.protocols.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "QOS",
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "Channel",
    "Topic",
    "ack_topic",
    "batch_topic",
    "check_gateway_id",
    "check_prefix",
    "command_topic",
    "gateway_subscription",
    "master_subscription",
    "parse_topic",
    "reply_topic",
    "shared_subscription",
    "status_topic",
    "topic",
]

QOS = 1
"""Every topic of the scheme is published and subscribed at QoS 1."""
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
_MAX_TOPIC_BYTES = 65535
_FORBIDDEN = ("/", "+", "#", "\x00")


class Channel(StrEnum):
    """The last two levels of a topic: direction and name."""

    BATCH = "up/batch"
    """Batches of records (``gateway.protocols.batch``)."""
    REPLY = "up/reply"
    """Command replies (``gateway.protocols.command``)."""
    STATUS = "up/status"
    """Retained online/offline status; the last will says offline."""
    COMMAND = "down/cmd"
    """Signed commands from the master."""
    ACK = "down/ack"
    """The master's acknowledgements of batches."""

    @property
    def direction(self) -> str:
        """``"up"`` (gateway to master) or ``"down"``."""
        return self.value.split("/")[0]

    @property
    def leaf(self) -> str:
        """The last level: ``batch``, ``reply``, ``status``, ``cmd`` or ``ack``."""
        return self.value.split("/")[1]


class Topic(NamedTuple):
    """A parsed topic of the scheme."""

    prefix: str
    gateway_id: str
    direction: str
    name: str

    @property
    def channel(self) -> Channel:
        return Channel(f"{self.direction}/{self.name}")


def _gateway_id_problem(gateway_id: object) -> str | None:
    if type(gateway_id) is not str or not gateway_id:
        return "gateway id must be non-empty text"
    if any(char in gateway_id for char in _FORBIDDEN):
        return f"gateway id {gateway_id!r} contains '/', '+', '#' or NUL"
    if not gateway_id.isprintable():
        return f"gateway id {gateway_id!r} contains control characters"
    return None


def _prefix_problem(prefix: object) -> str | None:
    if type(prefix) is not str or not prefix:
        return "topic prefix must be non-empty text"
    if prefix.startswith("$"):
        return f"topic prefix {prefix!r} starts with '$' (reserved by brokers)"
    for level in prefix.split("/"):
        if not level or any(char in level for char in _FORBIDDEN[1:]) or not level.isprintable():
            return f"topic prefix {prefix!r} has an empty level, a wildcard or a control character"
    return None


def check_gateway_id(gateway_id: str) -> str:
    """``gateway_id`` if it can be a topic level, else LocalProtocolError."""
    problem = _gateway_id_problem(gateway_id)
    if problem:
        raise LocalProtocolError(problem)
    return gateway_id


def check_prefix(prefix: str) -> str:
    """``prefix`` if it can start a topic (one or more levels), else LocalProtocolError."""
    problem = _prefix_problem(prefix)
    if problem:
        raise LocalProtocolError(problem)
    return prefix


def _checked_length(name: str, error: type[ProtocolError]) -> str:
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_TOPIC_BYTES:
        raise error("topic longer than 65535 bytes")
    return name


def topic(prefix: str, gateway_id: str, channel: Channel) -> str:
    """``<prefix>/<gateway-id>/<direction>/<name>``."""
    name = f"{check_prefix(prefix)}/{check_gateway_id(gateway_id)}/{Channel(channel).value}"
    return _checked_length(name, LocalProtocolError)


def batch_topic(prefix: str, gateway_id: str) -> str:
    return topic(prefix, gateway_id, Channel.BATCH)


def reply_topic(prefix: str, gateway_id: str) -> str:
    return topic(prefix, gateway_id, Channel.REPLY)


def status_topic(prefix: str, gateway_id: str) -> str:
    return topic(prefix, gateway_id, Channel.STATUS)


def command_topic(prefix: str, gateway_id: str) -> str:
    return topic(prefix, gateway_id, Channel.COMMAND)


def ack_topic(prefix: str, gateway_id: str) -> str:
    return topic(prefix, gateway_id, Channel.ACK)


def parse_topic(name: str) -> Topic:
    """``(prefix, gateway_id, direction, name)`` of a topic of the scheme.

    Anything else -- wrong channel, empty or bad levels, wildcards -- is
    RemoteProtocolError.
    """
    if type(name) is not str:
        raise RemoteProtocolError(f"topic must be text, got {type(name).__name__}")
    _checked_length(name, RemoteProtocolError)
    levels = name.split("/")
    if len(levels) < 4:
        raise RemoteProtocolError(f"topic {name!r}: expected <prefix>/<gateway-id>/<dir>/<name>")
    prefix, gateway_id = "/".join(levels[:-3]), levels[-3]
    direction, leaf = levels[-2], levels[-1]
    if f"{direction}/{leaf}" not in Channel._value2member_map_:
        raise RemoteProtocolError(f"topic {name!r}: unknown channel {direction}/{leaf}")
    problem = _prefix_problem(prefix) or _gateway_id_problem(gateway_id)
    if problem:
        raise RemoteProtocolError(f"topic {name!r}: {problem}")
    return Topic(prefix, gateway_id, direction, leaf)


def master_subscription(prefix: str) -> str:
    """Everything every gateway sends: ``<prefix>/+/up/#``."""
    return f"{check_prefix(prefix)}/+/up/#"


def gateway_subscription(prefix: str, gateway_id: str) -> str:
    """Everything for one gateway: ``<prefix>/<gateway-id>/down/#``."""
    return f"{check_prefix(prefix)}/{check_gateway_id(gateway_id)}/down/#"


def shared_subscription(group: str, prefix: str, channel: Channel = Channel.BATCH) -> str:
    """MQTT 5 shared subscription: ``$share/<group>/<prefix>/+/up/batch``.

    Master workers subscribed with the same group share the messages between them.
    """
    if type(group) is not str or not group or _gateway_id_problem(group):
        raise LocalProtocolError(f"share group {group!r} must be one non-empty topic level")
    return f"$share/{group}/{check_prefix(prefix)}/+/{Channel(channel).value}"
