"""Shared fixtures.  ``engine`` runs every fast-path test against both builds."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

from gateway import fastpath
from gateway.mosquitto import Mosquitto

settings.register_profile(
    "gateway", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile("gateway")


@pytest.fixture(scope="module", params=["compiled", "pure"])
def engine(request: pytest.FixtureRequest) -> ModuleType:
    """The compiled fast path, then its pure twin.  A missing compiled build fails."""
    module, kind, reason = fastpath.load(request.param)
    assert kind == request.param, reason
    return module


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    """A real Mosquitto broker on a free loopback port, stopped after the test."""
    with Mosquitto() as running:
        yield running
