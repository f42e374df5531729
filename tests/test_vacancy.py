"""The daily vacancy exception list (gateway.tasks.vacancy): the meters with no tenant
charged to the vacancy account on a local day, each as one VACANCY_EXCEPTION event the
master receives, once per day (also across a restart), only on a trusted clock."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import cbor2
from test_charging_year import charger, config, energy, meter, ms

from gateway.clock import ManualClock
from gateway.protocols.quantities import EventCode
from gateway.store import Store
from gateway.tasks.vacancy import VacancyTask

SHANGHAI = ZoneInfo("Asia/Shanghai")
PRICE = 8500  # the vacancy tariff: flat 0.85 yuan/kWh


def events(store: Store) -> list[tuple[str, int, dict[str, object]]]:
    rows = store.writer.call(
        lambda db: db.execute(
            "SELECT m.name, e.ts_ms, e.detail FROM events e JOIN meters m ON m.id = e.meter"
            " WHERE e.code = ? ORDER BY m.name, e.id",
            (int(EventCode.VACANCY_EXCEPTION),),
        ).fetchall()
    ).result(10)
    return [(str(m), int(ts), cbor2.loads(d)) for m, ts, d in rows]


def test_the_days_vacancy_exceptions_are_listed_once(tmp_path: Path) -> None:
    cfg = config(
        "  - {id: A, type: postpaid, tariff: flat}\n",
        meter(1, "A") + meter(2) + meter(3),  # m2, m3: no tenant
        "billing: {vacancy_tariff: flat}\n",
    )
    path = tmp_path / "gw.db"
    with charger(path, cfg) as c:
        for m in ("m1", "m2", "m3"):
            c.submit(energy(m, ms(2024, 6, 3, 9), 0))
        c.submit(energy("m2", ms(2024, 6, 3, 12), 1_000))  # 1 kWh: 8500
        c.submit(energy("m2", ms(2024, 6, 3, 20), 1_500))  # 0.5 kWh: 4250
        c.submit(energy("m3", ms(2024, 6, 3, 23, 30), 200))  # 0.2 kWh: 1700
        c.submit(energy("m1", ms(2024, 6, 3, 23, 30), 5_000))  # a tenant's: not listed
        c.submit(energy("m3", ms(2024, 6, 4, 0, 30), 400))  # the next day's
        assert c.wait_idle(10)
    store = Store.open(path, gateway_id="gw")
    try:
        just_after = datetime(2024, 6, 4, 0, 0, 30, tzinfo=SHANGHAI)
        clock = ManualClock(just_after, "Asia/Shanghai", trusted=False)
        task = VacancyTask(clock, store.writer, cfg, delay_s=60)
        task.tick()  # untrusted: nothing
        assert task.status()["suspended"] is True and events(store) == []
        clock.trust("test")
        task.tick()  # 30 s after midnight: 3 June not due yet (delay 60 s): 2 June is
        assert task.status()["day"] == "2024-06-02" and events(store) == []
        clock.advance(timedelta(seconds=60))
        task.tick()
        end = ms(2024, 6, 4)
        assert events(store) == [
            ("m2", end, {"day": "2024-06-03", "charges": 2, "amount": 8_500 + 4_250}),
            ("m3", end, {"day": "2024-06-03", "charges": 1, "amount": 1_700}),
        ]
        assert task.status() == {
            "suspended": False,
            "day": "2024-06-03",
            "meters": {
                "m2": {"charges": 2, "amount": 12_750},
                "m3": {"charges": 1, "amount": 1_700},
            },
            "amount": 14_450,
            "failures": 0,
        }
        task.tick()
        again = VacancyTask(clock, store.writer, cfg, delay_s=60)  # a restart
        again.tick()
        assert len(events(store)) == 2 and again.status()["amount"] == 14_450
        rows = store.writer.call(
            lambda db: db.execute("SELECT day, meters, amount FROM vacancy_lists").fetchall()
        ).result(10)
        assert sorted(tuple(r) for r in rows) == [("2024-06-02", 0, 0), ("2024-06-03", 2, 14_450)]
        clock.advance(timedelta(days=1))  # 4 June: m3's 0.2 kWh at 00:30
        task.tick()
        assert events(store)[-1] == (
            "m3",
            ms(2024, 6, 5),
            {"day": "2024-06-04", "charges": 1, "amount": 1_700},
        )
    finally:
        store.close()
