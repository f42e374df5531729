"""Golden case worked by hand: one prepaid account with three DL/T 645 meters of
different CT ratios (1, 50/5 = 10, 300/5 = 60) at 0.6793 yuan/kWh, its balance exact to
0.0001 yuan after each reading, and its prepaid states in order:
normal -> alarm1 -> alarm2 -> due_to_trip, then, after a top-up above the close-allow
level, may_close.  Real SQLite; the events and the ledger are checked on disk.

Readings are what the poller hands over: the register (0.01 kWh steps) x CT.  Each meter
keeps its own rounding accumulator: it has posted round_half_up(cum Wh x 6793 / 1000)
in total, 0.0001 yuan.  Levels: alarm 1 at 20 yuan (200000), alarm 2 at 5 yuan (50000),
no overdraft, close allowed above 10 yuan (100000).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import cbor2
from polling import START
from test_charging import opened_store

from gateway.charging import Charger
from gateway.config import parse_config
from gateway.prepaid import PrepaidState, StateChange
from gateway.protocols.quantities import EventCode, Quantity, Reading
from gateway.store.ledger import EntryKind, TopUp, check_balances

T0 = int(START.timestamp() * 1000)
S = PrepaidState

CONFIG = """
gateway_id: gw
serial_buses:
  - {name: dl, port: /dev/null, protocol: dlt645}
meters:
  - {id: m1, bus: dl, address: "000000000001", account: A}
  - {id: m2, bus: dl, address: "000000000002", account: A, ct_ratio: 10}
  - {id: m3, bus: dl, address: "000000000003", account: A, ct_ratio: 60}
accounts:
  - {id: A, type: prepaid, tariff: flat}
tariffs:
  - {id: flat, version: 1, effective: "2024-01-01T00:00:00+08:00", kind: flat, price: 6793}
billing:
  thresholds: {alarm1: 200000, alarm2: 50000, overdraft_limit: 0, close_allow: 100000}
uplink: {host: localhost}
"""

CT = {"m1": 1, "m2": 10, "m3": 60}


def test_three_meters_one_account_golden(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    config = parse_config(CONFIG, "gw.yaml")
    store = opened_store(path, config, max_delay=0.01)
    charger = Charger(store.writer, config, now_ms=lambda: T0)
    changes: list[StateChange] = []
    charger.add_listener(lambda change, meters: changes.append(change))
    register = {"m1": 10_000, "m2": 5_000, "m3": 1_000}  # 100.00, 50.00, 10.00 kWh
    clock = [0]

    def read(meter: str, steps: int) -> int:
        """The register rises by ``steps`` x 0.01 kWh; the account's balance after."""
        register[meter] += steps
        clock[0] += 60_000
        wh = register[meter] * 10 * CT[meter]  # 0.01 kWh = 10 Wh, x CT
        charger.submit(Reading(meter, T0 + clock[0], {Quantity.ENERGY_IMPORT: wh}))
        return charger.balance("A")

    try:
        # a new prepaid account is due to trip at 0; 25 yuan and the relays closed it
        assert charger.state("A") == S.DUE_TO_TRIP
        charger.top_up(TopUp("open", "A", EntryKind.TOP_UP, 250_000, T0)).result(10)
        charger.relay_closed("A")
        assert charger.state("A") == S.NORMAL
        changes.clear()
        for m in ("m1", "m2", "m3"):
            assert read(m, 0) == 250_000  # baselines: no charge

        # m1 (CT 1) +0.37 kWh = 370 Wh: 370 x 6793 / 1000 = 2513.41 -> 2513
        assert read("m1", 37) == 250_000 - 2_513 == 247_487
        assert charger.state("A") == S.NORMAL
        # m2 (CT 10) +0.91 kWh x 10 = 9100 Wh: 61816.3 -> 61816;  247487 - 61816
        assert read("m2", 91) == 185_671  # <= 200000: alarm 1
        assert charger.state("A") == S.ALARM1
        # m3 (CT 60) +0.03 kWh x 60 = 1800 Wh: 12227.4 -> 12227
        assert read("m3", 3) == 173_444
        # m2 +0.09 x 10 = 900 Wh: cum 10000 Wh -> 67930.0; posted 61816 -> 6114
        # (900 Wh alone would be 6113.7 -> 6114 too; the rule is the cumulative one)
        assert read("m2", 9) == 167_330
        # m3 +0.27 x 60 = 16200 Wh: cum 18000 -> 122274.0; posted 12227 -> 110047
        assert read("m3", 27) == 57_283  # still above 5 yuan
        assert charger.state("A") == S.ALARM1
        # m1 +1.20 kWh = 1200 Wh: cum 1570 -> 10665.01 -> 10665; posted 2513 -> 8152
        assert read("m1", 120) == 49_131  # <= 50000: alarm 2
        assert charger.state("A") == S.ALARM2
        # m3 +0.10 x 60 = 6000 Wh: cum 24000 -> 163032.0; posted 122274 -> 40758
        assert read("m3", 10) == 8_373
        # m2 +0.02 x 10 = 200 Wh: cum 10200 -> 69288.6 -> 69289; posted 67930 -> 1359
        assert read("m2", 2) == 7_014
        # m3 +0.02 x 60 = 1200 Wh: cum 25200 -> 171183.6 -> 171184; posted 163032 -> 8152
        assert read("m3", 2) == -1_138  # + overdraft 0 <= 0: due to trip
        assert charger.state("A") == S.DUE_TO_TRIP
        assert charger.accounts_in(S.DUE_TO_TRIP) == ["A"]

        # 10 yuan: -1138 + 100000 = 98862, not above the close-allow level (100000)
        charger.top_up(TopUp("t1", "A", EntryKind.TOP_UP, 100_000, T0 + 700_000)).result(10)
        assert charger.balance("A") == 98_862 and charger.state("A") == S.DUE_TO_TRIP
        # 0.2 yuan more: 100862 > 100000: may close
        charger.top_up(TopUp("t2", "A", EntryKind.TOP_UP, 2_000, T0 + 710_000)).result(10)
        assert charger.balance("A") == 100_862 and charger.state("A") == S.MAY_CLOSE

        assert [(c.old, c.new, c.balance) for c in changes] == [
            (S.NORMAL, S.ALARM1, 185_671),
            (S.ALARM1, S.ALARM2, 49_131),
            (S.ALARM2, S.DUE_TO_TRIP, -1_138),
            (S.DUE_TO_TRIP, S.MAY_CLOSE, 100_862),
        ]
        assert charger.wait_idle(10) and charger.lost == 0
        store.writer.flush(10)
    finally:
        charger.close()
        store.close()

    conn = sqlite3.connect(path)
    try:
        # per meter the charges sum to the cost of its whole consumption, rounded once:
        # m1 1570 Wh -> 10665, m2 10200 Wh -> 69289, m3 25200 Wh -> 171184
        per_meter = dict(
            conn.execute(
                "SELECT meter, -sum(amount) FROM ledger WHERE kind = 1 GROUP BY meter"
            ).fetchall()
        )
        assert per_meter == {"m1": 10_665, "m2": 69_289, "m3": 171_184}
        # 250000 - (10665 + 69289 + 171184 = 251138) + 100000 + 2000 = 100862
        assert conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone() == (100_862,)
        assert conn.execute("SELECT year_wh FROM rating_year").fetchone() == (36_970,)
        events = conn.execute(
            "SELECT m.name, e.detail FROM events e JOIN meters m ON m.id = e.meter"
            " WHERE e.code = ? ORDER BY e.id",
            (int(EventCode.PREPAID_STATE),),
        ).fetchall()
        # each on the meter whose reading changed the state (a top-up: the first meter)
        assert [(m, cbor2.loads(d)["new"]) for m, d in events][-4:] == [
            ("m2", "alarm1"),
            ("m1", "alarm2"),
            ("m3", "due_to_trip"),
            ("m1", "may_close"),
        ]
        from sqlite_utils import Database

        assert check_balances(Database(conn)) == []
    finally:
        conn.close()
