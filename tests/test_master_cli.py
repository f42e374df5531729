"""``gateway master run`` as a process: SIGKILLed between its commit and its
acknowledgement, and at random moments while a gateway streams batches, it stores
every batch exactly once after restarts; ``gateway master stats`` shows it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_master_ingest import GW, FakeGateway, make_batch

from gateway.cmd.master import STALL_ENV
from gateway.master import MasterStore
from gateway.mosquitto import Mosquitto
from gateway.protocols.batch import Ack, encode_batch


def gateway(*args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


def start_master(
    broker: Mosquitto, db: Path, log: Path, stall: float = 0.0
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop(STALL_ENV, None)
    if stall:
        env[STALL_ENV] = str(stall)
    with log.open("ab") as out:
        return subprocess.Popen(
            gateway(
                "master", "run", "-v", "--db", str(db), "--broker", f"{broker.host}:{broker.port}"
            ),
            stdout=out,
            stderr=out,
            env=env,
        )


def stored_batches(db: Path) -> int:
    try:
        with MasterStore.open(db, now_ms=lambda: 0, readonly=True) as store:
            return sum(s.batches for s in store.summary())
    except Exception:  # not created yet
        return -1


def wait_for(condition: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def check_exactly_once(db: Path, batches: int, per_batch: int) -> None:
    with MasterStore.open(db, now_ms=lambda: 0, readonly=True) as store:
        expected = [
            r for seq in range(1, batches + 1) for r in make_batch(seq, n=per_batch).readings
        ]
        assert store.readings(GW) == expected
        (summary,) = store.summary()
        assert (summary.batches, summary.readings) == (batches, batches * per_batch)
        assert store.integrity() is None  # PRAGMA integrity_check


def test_sigkill_between_commit_and_ack_then_the_resent_batch_is_stored_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    db, log = tmp_path / "master.db", tmp_path / "master.log"
    fake = FakeGateway(broker)
    master = start_master(broker, db, log, stall=60)
    try:
        wait_for(lambda: stored_batches(db) == 0)  # migrated and (soon) subscribed
        batch = make_batch(1)
        wait_for(lambda: "subscribed" in log.read_text())
        fake.publish(encode_batch(batch))
        wait_for(lambda: stored_batches(db) == 1)  # committed; now stalled before the ack
        time.sleep(0.2)
        assert fake.acks.empty()
        master.send_signal(signal.SIGKILL)
        assert master.wait(5) == -signal.SIGKILL
        assert fake.acks.empty()  # the gateway was never told: it must send again

        master = start_master(broker, db, log)
        wait_for(lambda: log.read_text().count("subscribed") == 2)
        fake.publish(encode_batch(batch))  # the gateway's re-send
        assert fake.ack() == Ack(7, 1)
        # the broker's redelivery (persistent session, never PUBACKed) and the re-send
        wait_for(lambda: log.read_text().count("seq 1: duplicate") >= 1)
        check_exactly_once(db, 1, 3)
        master.send_signal(signal.SIGTERM)
        assert master.wait(10) == 0
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
        fake.close()


def test_sigkill_at_random_moments_while_a_gateway_streams(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """Five SIGKILLs while 150 batches stream in over ~7 s; the fake gateway re-sends what is
    missing or unacknowledged, as the uplink does.  Afterwards every batch is stored
    exactly once and the store passes ``PRAGMA integrity_check``."""
    seed = time.time_ns()
    rng = random.Random(seed)
    db, log = tmp_path / "master.db", tmp_path / "master.log"
    total, per_batch = 150, 20
    payloads = {seq: encode_batch(make_batch(seq, n=per_batch)) for seq in range(1, total + 1)}
    fake = FakeGateway(broker)
    master = start_master(broker, db, log)
    kills, sent, acked = 0, 0, 0
    next_kill = time.monotonic() + rng.uniform(0.4, 1.2)
    last_progress = next_send = time.monotonic()
    try:
        deadline = time.monotonic() + 60
        while acked < total:
            assert time.monotonic() < deadline, f"seed {seed}: acked {acked} of {total}"
            if sent < total and time.monotonic() >= next_send:
                sent += 1
                fake.publish(payloads[sent])
                next_send += 0.05
            while not fake.acks.empty():
                ack = fake.acks.get()
                if ack.highest_contiguous > acked:
                    acked, last_progress = ack.highest_contiguous, time.monotonic()
                for seq in ack.missing:
                    fake.publish(payloads[seq])
            if time.monotonic() - last_progress > 1.0:  # no ack for a while: send again
                for seq in range(acked + 1, min(sent, acked + 20) + 1):
                    fake.publish(payloads[seq])
                last_progress = time.monotonic()
            if kills < 5 and time.monotonic() > next_kill:
                master.send_signal(signal.SIGKILL)
                master.wait(5)
                kills += 1
                master = start_master(broker, db, log)
                next_kill = time.monotonic() + rng.uniform(0.4, 1.2)
            time.sleep(0.01)
        assert kills == 5, f"seed {seed}: only {kills} kills before all was acknowledged"
        master.send_signal(signal.SIGTERM)
        assert master.wait(10) == 0
        check_exactly_once(db, total, per_batch)
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()
        fake.close()


def test_stats_prints_per_gateway_counts(broker: Mosquitto, tmp_path: Path) -> None:
    db, log = tmp_path / "master.db", tmp_path / "master.log"
    fake = FakeGateway(broker)
    master = start_master(broker, db, log)
    try:
        wait_for(lambda: "subscribed" in log.read_text())
        for seq in (1, 2):
            fake.publish(encode_batch(make_batch(seq)))
        while (ack := fake.ack()) != Ack(7, 2):
            assert ack == Ack(7, 1)
        wait_for(lambda: stored_batches(db) == 2)
        out = subprocess.run(
            gateway("master", "stats", "--db", str(db)), capture_output=True, text=True, check=True
        ).stdout
        header, row, footer = out.splitlines()
        assert header.split()[:5] == ["gateway", "status", "epochs", "batches", "readings"]
        assert row.split()[:5] == [GW, "-", "1", "2", "6"]
        assert footer == "1 gateways; 0 rejected messages"
    finally:
        master.send_signal(signal.SIGTERM)
        assert master.wait(10) == 0
        fake.close()


def test_bad_arguments_are_one_line_errors(tmp_path: Path) -> None:
    bad = subprocess.run(
        gateway("master", "run", "--db", str(tmp_path / "m.db"), "--broker", "nowhere"),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith("argument --broker: 'nowhere': expected HOST:PORT")
    )
    missing = subprocess.run(
        gateway("master", "stats", "--db", str(tmp_path / "none.db")),
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "cannot open master store" in missing.stderr
    assert not (tmp_path / "none.db").exists()
