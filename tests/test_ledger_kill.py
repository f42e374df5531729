"""A process applying top-ups is killed with SIGKILL at random moments, each run
replaying every top-up id from the start: afterwards each top-up is applied exactly
once, every one acknowledged before a kill is on disk, the balances re-add from the
ledger and the file passes ``PRAGMA integrity_check``."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from gateway.store import Store
from gateway.store.ledger import EntryKind, Ledger, LedgerReader, TopUp

COUNT = 150
KILLS = 6

CHILD = textwrap.dedent(
    """
    import sys
    import time
    from datetime import date
    from gateway.store import Store
    from gateway.store.ledger import EntryKind, Ledger, TopUp

    store = Store.open(sys.argv[1], gateway_id="gw-kill", max_delay=0.01)
    ledger = Ledger(store)
    ledger.open_account(
        "A", "prepaid", trip_on_arrears=True, opened_day=date(2024, 6, 1), opened_ms=0
    ).result(30)
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        result = ledger.top_up(TopUp(f"t{i}", "A", EntryKind.TOP_UP, 1000 + i, i)).result(30)
        print(f"{i} {int(result.applied)}", flush=True)
        time.sleep(0.002)  # slower than the parent's kill window, also on tmpfs
    print("done", flush=True)
    """
)


def run_and_kill(path: Path, lines: int, after: float) -> set[int]:
    """Start the child, SIGKILL it ``after`` seconds after it reported ``lines`` top-ups;
    the ids it reported as committed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(COUNT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    got = [child.stdout.readline() for _ in range(lines)]
    time.sleep(after)
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    got += child.stdout.read().split("\n")
    child.stdout.close()
    # the last line may be cut by the kill: keep whole "<id> <applied>" lines only
    return {int(line.split()[0]) for line in got if len(line.split()) == 2}


def test_sigkill_during_top_ups_applies_each_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(6)
    path = tmp_path / "gw.db"
    acknowledged: set[int] = set()
    progress = []
    for _ in range(KILLS):
        # each run replays from t0: kill it at a random point past the previous run's
        done = max(acknowledged, default=-1) + 1
        ids = run_and_kill(path, rng.randint(done, done + COUNT // KILLS), rng.uniform(0, 0.005))
        acknowledged |= ids
        progress.append(len(ids))
    assert 0 < max(progress) < COUNT  # killed part-way
    with LedgerReader(path) as reader:
        on_disk = {e.reference for e in reader.entries(limit=10 * COUNT)}
    assert {f"t{i}" for i in acknowledged} <= on_disk  # acknowledged means on disk
    with Store.open(path, gateway_id="gw-kill", max_delay=0.01) as store:
        assert store.report.unclean_stop
        ledger = Ledger(store)
        for i in range(COUNT):  # every top-up arrives once more
            result = ledger.top_up(TopUp(f"t{i}", "A", EntryKind.TOP_UP, 1000 + i, i)).result(30)
            assert result.entry is not None and result.entry.amount == 1000 + i
            assert result.applied == (f"t{i}" not in on_disk)
        assert ledger.check().result(30) == []
    with LedgerReader(path) as reader:
        entries = reader.entries(limit=10 * COUNT)
        # 1000 + 1001 + ... + 1149 = 150 * 1000 + 149 * 150 / 2 = 161_175
        assert reader.balance("A") == sum(1000 + i for i in range(COUNT)) == 161_175
    assert sorted(e.reference for e in entries) == sorted(f"t{i}" for i in range(COUNT))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_a_committed_top_up_survives_a_kill_right_after_its_acknowledgement(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gw.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    assert child.stdout.readline().strip() == "0 1"  # applied and acknowledged
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    with Store.open(path, gateway_id="gw-kill") as store:
        again = Ledger(store).top_up(TopUp("t0", "A", EntryKind.TOP_UP, 1000, 0)).result(10)
        assert again.duplicate
    with LedgerReader(path) as reader:
        assert reader.balance("A") == 1000


READINGS_CHILD = textwrap.dedent(
    """
    import sys
    from datetime import date
    from gateway.protocols.quantities import Quantity, Reading
    from gateway.store import Store
    from gateway.store.ledger import Charge, Ledger

    store = Store.open(sys.argv[1], gateway_id="gw-kill", max_delay=0.01)
    ledger = Ledger(store)
    ledger.open_account(
        "A", "prepaid", trip_on_arrears=True, opened_day=date(2024, 6, 1), opened_ms=0
    ).result(30)
    print("ready", flush=True)
    for i in range(10_000):
        reading = Reading("m1", i, {Quantity.ENERGY_IMPORT: i})
        ledger.journal_with_charges(reading, [Charge("A", i, 7, f"m1@{i}", 1, "m1")]).result(30)
        print(i, flush=True)
    """
)


def test_sigkill_while_posting_readings_leaves_no_reading_without_its_charge(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    path = tmp_path / "gw.db"
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", READINGS_CHILD, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        for _ in range(rng.randint(1, 40)):
            child.stdout.readline()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
    conn = sqlite3.connect(path)
    try:
        readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        charges = conn.execute("SELECT count(*), sum(amount) FROM ledger WHERE kind = 1").fetchone()
        balance = conn.execute("SELECT balance FROM accounts WHERE id = 'A'").fetchone()[0]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    # each run restarts at reading 0: every reading journaled has its one charge of 7
    assert readings >= 3 and charges == (readings, -7 * readings) and balance == -7 * readings
