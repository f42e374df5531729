"""The private broker the demo and the tests use is a real Mosquitto."""

from __future__ import annotations

import queue
import socket
import threading

import paho.mqtt.client as mqtt
import pytest

from gateway.errors import UplinkError
from gateway.mosquitto import Mosquitto


def test_publish_and_receive_through_real_broker(broker: Mosquitto) -> None:
    got: queue.Queue[tuple[str, bytes]] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t")
    subscribed = threading.Event()
    client.on_message = lambda _c, _u, msg: got.put((msg.topic, msg.payload))
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe("gw/+/up/#", qos=1)
        assert subscribed.wait(5)
        client.publish("gw/g1/up/batch", b"\xa1\x01\x01", qos=1).wait_for_publish(5)
        topic, payload = got.get(timeout=5)
        assert (topic, payload) == ("gw/g1/up/batch", b"\xa1\x01\x01")
    finally:
        client.loop_stop()
        client.disconnect()


def test_stop_and_restart_keeps_the_port() -> None:
    with Mosquitto() as broker:
        port = broker.port
        broker.stop()
        with pytest.raises(OSError):
            socket.create_connection((broker.host, port), timeout=0.5).close()
        broker.start()
        socket.create_connection((broker.host, port), timeout=2).close()
        assert broker.port == port


def test_port_in_use_is_a_clear_error() -> None:
    with Mosquitto() as first:
        clash = Mosquitto(port=first.port)
        try:
            with pytest.raises(UplinkError, match="mosquitto"):
                clash.start(timeout=3)
        finally:
            clash.close()
