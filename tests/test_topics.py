"""MQTT topic scheme: builders, parser, subscriptions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.topics import (
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Channel,
    Topic,
    ack_topic,
    batch_topic,
    command_topic,
    gateway_subscription,
    master_subscription,
    parse_topic,
    reply_topic,
    shared_subscription,
    status_topic,
    topic,
)


def test_builders_spell_the_contract() -> None:
    assert batch_topic("meters", "gw-01") == "meters/gw-01/up/batch"
    assert reply_topic("meters", "gw-01") == "meters/gw-01/up/reply"
    assert status_topic("meters", "gw-01") == "meters/gw-01/up/status"
    assert command_topic("meters", "gw-01") == "meters/gw-01/down/cmd"
    assert ack_topic("meters", "gw-01") == "meters/gw-01/down/ack"
    assert topic("acme/site-3", "集中器-7", Channel.BATCH) == "acme/site-3/集中器-7/up/batch"
    assert (STATUS_ONLINE, STATUS_OFFLINE) == (b"online", b"offline")


def test_subscriptions() -> None:
    assert master_subscription("meters") == "meters/+/up/#"
    assert gateway_subscription("meters", "gw-01") == "meters/gw-01/down/#"
    assert shared_subscription("ingest", "meters") == "$share/ingest/meters/+/up/batch"
    assert shared_subscription("ingest", "a/b", Channel.REPLY) == "$share/ingest/a/b/+/up/reply"
    for group in ("", "a/b", "+", "#"):
        with pytest.raises(LocalProtocolError):
            shared_subscription(group, "meters")


def test_parse_gives_prefix_gateway_direction_name() -> None:
    parsed = parse_topic("acme/site-3/gw-01/down/cmd")
    assert parsed == Topic("acme/site-3", "gw-01", "down", "cmd")
    assert parsed.channel is Channel.COMMAND
    assert (Channel.STATUS.direction, Channel.STATUS.leaf) == ("up", "status")


@pytest.mark.parametrize("channel", list(Channel))
def test_every_channel_round_trips(channel: Channel) -> None:
    parsed = parse_topic(topic("p", "gw", channel))
    assert (parsed.prefix, parsed.gateway_id, parsed.channel) == ("p", "gw", channel)


@pytest.mark.parametrize(
    "name",
    [
        "meters/gw-01/up/batches",  # unknown name
        "meters/gw-01/down/batch",  # batch goes up, not down
        "meters/gw-01/sideways/cmd",
        "gw-01/up/batch",  # no prefix
        "/gw-01/up/batch",  # empty prefix
        "meters//up/batch",  # empty gateway id
        "meters/+/up/batch",  # a subscription pattern, not a topic
        "meters/#/up/batch",
        "meters/gw-01/up/batch/",
        "a//b/gw-01/up/batch",  # empty prefix level
        "$SYS/gw-01/up/batch",
        "meters/gw\x00/up/batch",
        "meters/gw\n01/up/batch",
        "",
    ],
)
def test_parse_refuses_anything_else(name: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_topic(name)


def test_parse_refuses_non_text() -> None:
    with pytest.raises(RemoteProtocolError):
        parse_topic(b"meters/gw/up/batch")  # type: ignore[arg-type]


@pytest.mark.parametrize("gateway_id", ["", "a/b", "a+", "#", "x\x00", "tab\there"])
def test_builders_refuse_bad_gateway_ids(gateway_id: str) -> None:
    with pytest.raises(LocalProtocolError):
        batch_topic("meters", gateway_id)


@pytest.mark.parametrize("prefix", ["", "/meters", "meters/", "a//b", "$SYS", "a/+", "#"])
def test_builders_refuse_bad_prefixes(prefix: str) -> None:
    with pytest.raises(LocalProtocolError):
        batch_topic(prefix, "gw")
    with pytest.raises(LocalProtocolError):
        master_subscription(prefix)


levels = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="/+#$"),
    min_size=1,
    max_size=8,
).filter(str.isprintable)


@given(st.lists(levels, min_size=1, max_size=3), levels, st.sampled_from(Channel))
def test_built_topics_parse_back(prefix_levels: list[str], gateway_id: str, ch: Channel) -> None:
    prefix = "/".join(prefix_levels)
    parsed = parse_topic(topic(prefix, gateway_id, ch))
    assert parsed == Topic(prefix, gateway_id, ch.direction, ch.leaf)


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_remote_protocol_error(name: str) -> None:
    try:
        parsed = parse_topic(name)
    except RemoteProtocolError:
        return
    assert topic(parsed.prefix, parsed.gateway_id, parsed.channel) == name
