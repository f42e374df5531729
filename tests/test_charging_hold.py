"""A meter number changed without a work order (domain.md, "the hard cases"), end to end:
the simulated meter is swapped (new number, register at 1 kWh); the poller's
METER_NUMBER_CHANGED reaches the Charger, which drops the meter from billing and holds it
in the store; its readings are journaled, not charged, until a person confirms
(gateway.lifecycle.confirm_meter through Charger.apply, then Poller.confirm); then the
held stretch is charged from where the new meter showed up."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import cbor2
from polling import START, M, sim_yaml, wait_for
from test_charging import FUND, PRICE, config_yaml, half_up, opened_store, reg

from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.lifecycle import confirm_meter
from gateway.poller import Poller, PollSettings
from gateway.protocols.quantities import EventCode
from gateway.runtime import Runtime
from gateway.sim.config import parse_sim_config
from gateway.sim.service import Simulator
from gateway.store import Store
from gateway.store.meters import record_of


def read_at(poller: Poller, now_ms: int) -> Callable[[], bool]:
    return lambda: all((s.energy_ts_ms or -1) >= now_ms for s in poller.meters.values())


@contextmanager
def swap_bench(tmp_path: Path) -> Iterator[tuple[Runtime, Simulator, ManualClock]]:
    """The site: ``sw`` (5000 kWh, 3600 W) and ``ok`` (1800 W) on the funded account A,
    polled continuously by a charging gateway on a simulated DL/T 645 line."""
    ms: list[tuple[M, str | None]] = [
        (M("sw", "dl", "dlt645", 1, energy_wh=5_000_000, watts=3_600, turnaround_ms=5), "A"),
        (M("ok", "dl", "dlt645", 2, energy_wh=7_000, watts=1_800, turnaround_ms=5), "A"),
    ]
    clock = ManualClock(START)
    sim_config = parse_sim_config(
        sim_yaml([("dl", "dlt645", 38400)], [m for m, _ in ms]), "s.yaml", link_dir=str(tmp_path)
    )
    path = tmp_path / "gw.db"
    with Simulator(sim_config, clock) as sim:
        config = parse_config(config_yaml(sim.bus("dl").path, ms), "gw.yaml")
        opened_store(path, config, FUND).close()
        rt = Runtime(
            config,
            store_path=path,
            clock=clock,
            settings=PollSettings(interval=0, max_power_w=10**9),  # see test_charging
            status_socket=None,
            reopen_max=0.2,
            charging=True,
        )
        with rt:
            yield rt, sim, clock


def test_a_swapped_meter_is_held_until_confirmed(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with swap_bench(tmp_path) as (rt, sim, clock):
        charger, poller = rt.charger, rt.pollers["dl"]
        assert charger is not None

        def step(seconds: int) -> None:
            clock.advance(timedelta(seconds=seconds))
            wait_for(read_at(poller, int(clock.now().timestamp() * 1000)), 10, "polled")

        def truth(meter: str) -> int:
            return int(sim.truth(meter)["meters"][meter]["energy_import_wh"])

        step(0)
        step(600)  # sw: 600 Wh, ok: 300 Wh
        before = truth("sw")
        sim.control("sw", "swap", {"meter_number": "990000000001", "energy_import_wh": 1_000})
        wait_for(lambda: "sw" not in charger.billing, 10, "the swapped meter held")
        assert charger.meters_of("A") == ("ok",) and charger.status()["held"] == ["sw"]
        assert poller.status()["swapped"] == ["sw"]
        step(900)  # the held stretch: 900 Wh on sw, journaled, not charged
        step(900)
        assert charger.wait_idle(10)
        held_cost = half_up((reg(truth("ok")) - reg(7_000)), PRICE)
        pre = reg(before) - reg(5_000_000)
        assert charger.balance("A") == FUND - half_up(pre, PRICE) - held_cost
        with sqlite3.connect(path) as conn:
            events = conn.execute(
                "SELECT e.detail FROM events e JOIN meters m ON m.id = e.meter"
                " WHERE m.name = 'sw' AND e.code = ?",
                (int(EventCode.METER_NUMBER_CHANGED),),
            ).fetchall()
        assert len(events) == 1  # journaled once, in the hold's transaction
        detail = cbor2.loads(events[0][0])  # no work order: no "work_order" match
        assert detail == {"old": "000000000001", "new": "990000000001"}
        # a person confirms: the held stretch is charged from the new meter's first reading
        rec = charger.apply(
            lambda db: confirm_meter(
                db, "sw", approved_by="tech-7", reason="work order 12 late",
                ts_ms=int(clock.now().timestamp() * 1000),
            )
        ).result(10)  # fmt: skip
        assert rec.status == "active" and "sw" in charger.billing
        assert charger.status()["held"] == []
        poller.confirm("sw")
        assert poller.status()["swapped"] == []
        step(300)
        for bus in rt.buses.values():
            bus.stop()
        assert charger.wait_idle(10)
        post = reg(truth("sw")) - reg(1_000)
        used_ok = reg(truth("ok")) - reg(7_000)
        assert post >= 2_000  # 900 + 900 + 300 Wh at 1 Wh/s, to the register's 10 Wh
        # each meter keeps its own rounding accumulator across the hold
        expected = FUND - half_up(pre + post, PRICE) - half_up(used_ok, PRICE)
        assert charger.balance("A") == expected
        wait_for(lambda: rt.writer is not None and rt.writer.stats().queue_depth == 0, 5, "q")
    store = Store.open(path, gateway_id="gw")
    try:
        assert store.writer.call(lambda db: record_of(db, "sw")).result(10).status == "active"  # type: ignore[union-attr]
        balance = store.writer.call(
            lambda db: db.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()[0]
        ).result(10)
        assert balance == expected
    finally:
        store.close()
