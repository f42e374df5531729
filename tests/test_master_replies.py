"""The master's ingest stores the gateways' command replies (``up/reply``) through a real
Mosquitto: once however often one is delivered (also after a restart of the master),
another answer to the same command id as a row of its own, a malformed one rejected;
``gateway master stats`` counts them.  End to end: a signed top-up to a gateway runtime
polling a simulated meter, its reply found in the master's store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from polling import START, wait_for
from test_commands import GW as CMD_GW
from test_commands import YUAN, command, gateway, send, top_up
from test_commands import master_key as master_key  # the fixture
from test_master_ingest import GW, FakeGateway, stored, wait
from test_master_ingest import master as master  # the fixture

from gateway.clock import ManualClock
from gateway.commands.keys import public_key_bytes
from gateway.master import Master
from gateway.mosquitto import Mosquitto
from gateway.protocols.command import (
    CommandKind,
    CommandReply,
    ReasonCode,
    ReplyStatus,
    encode_reply,
    new_command_id,
)
from gateway.protocols.topics import reply_topic


def test_replies_are_stored_once_with_their_result(
    master: Master, broker: Mosquitto, tmp_path: Path
) -> None:
    fake = FakeGateway(broker)
    topic = reply_topic("gw", GW)
    first_id, other_id = new_command_id(), new_command_id()
    ok = CommandReply(first_id, ReplyStatus.OK, ReasonCode.NONE, "",
                      {"balance": 5 * YUAN, "raw": b"\x01\xab", "more": {"n": [1, 2]}})  # fmt: skip
    replayed = CommandReply(first_id, ReplyStatus.REFUSED, ReasonCode.REPLAYED, "seen before",
                            {"original": {"status": 0}})  # fmt: skip
    failed = CommandReply(other_id, ReplyStatus.FAILED, 99, "a reason this master does not know")
    try:
        for reply in (ok, ok, replayed, failed):
            fake.publish(encode_reply(reply), topic=topic)
        fake.publish(b"\xa1\x00 not a reply", topic=topic)
        stats = wait(master, lambda s: s.replies == 3 and s.reply_duplicates == 1)
        stats = wait(master, lambda s: s.rejected == 1)
        assert stats.batches == 0
        with stored(master) as store:
            rows = store.replies(GW)
            assert store.replies("nobody") == [] and store.replies() == rows
            assert [(r.command, r.status, r.reason, r.text, r.result) for r in rows] == [
                (first_id.hex(), "OK", "NONE", "",
                 {"balance": 5 * YUAN, "raw": "01ab", "more": {"n": [1, 2]}}),
                (first_id.hex(), "REFUSED", "REPLAYED", "seen before", {"original": {"status": 0}}),
                (other_id.hex(), "FAILED", "99", "a reason this master does not know", {}),
            ]  # fmt: skip
            assert all(r.gateway_id == GW and r.received_ms > 0 for r in rows)
            (summary,) = store.summary()
            assert (summary.replies, summary.batches) == (3, 0)
            assert "reply" in store.rejected()[0][1]
        master.stop()  # a restart of the master: the same reply again stores nothing
        with Master(tmp_path / "master.db", broker.host, broker.port) as again:
            fake.publish(encode_reply(ok), topic=topic)
            assert wait(again, lambda s: s.reply_duplicates == 1).replies == 0
            with stored(again) as store:
                assert len(store.replies(GW)) == 3
    finally:
        fake.close()


def test_a_gateways_reply_reaches_the_store_and_master_stats(
    broker: Mosquitto, tmp_path: Path, master_key: Ed25519PrivateKey
) -> None:
    db = tmp_path / "master.db"
    with Master(db, broker.host, broker.port, client_id="master-replies") as master:
        key = public_key_bytes(master_key)
        with gateway(tmp_path, broker, key, ManualClock(START)) as rt:
            cmd = command(rt, master_key, CommandKind.TOP_UP, top_up(20 * YUAN, "R-1"))
            reply = send(broker, cmd)
            assert reply.status == ReplyStatus.OK, reply

            def found() -> list[object]:
                with stored(master) as store:
                    return [r for r in store.replies(CMD_GW) if r.command == cmd.command_id.hex()]

            wait_for(lambda: bool(found()), 10, "the top-up's reply stored")
            (row,) = found()
            assert (row.status, row.reason, row.text) == ("OK", "NONE", "")  # type: ignore[attr-defined]
            assert row.result == {k: v for k, v in reply.result.items()}  # type: ignore[attr-defined]
            with stored(master) as store:
                count = len(store.replies(CMD_GW))  # the probes' UNSIGNED replies too
        out = subprocess.run(
            [sys.executable, "-m", "gateway", "master", "stats", "--db", str(db)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    header, row_line, footer = out.splitlines()
    columns = header.split()
    assert "replies" in columns
    cells = row_line.split()
    assert cells[0] == CMD_GW and cells[columns.index("replies")] == str(count)
    assert footer.startswith("1 gateways;")
