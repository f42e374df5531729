"""The command replay table (store migration 5): one row per command id, kept past its
expiry and then forgotten; the issue-time floor of time-sets."""

from __future__ import annotations

import sqlite3

import pytest
from sqlite_utils import Database

from gateway.commands import replay
from gateway.protocols.command import Command, CommandKind, CommandReply, ReplyStatus
from gateway.store.migrations import JOURNAL

T0 = 1_717_200_000_000


def test_migration_5_keeps_one_reply_per_command_id() -> None:
    db = Database(memory=True)
    JOURNAL.apply(db, T0)
    row = (b"\x01" * 16, 1, T0, T0 + 300_000, T0 + 1, T0 + 86_700_000, 0, b"\xa0")
    db.execute("INSERT INTO commands VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO commands VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
    assert db.execute("SELECT id, reply FROM commands").fetchall() == [(row[0], row[7])]


def test_ids_are_kept_past_expiry_then_forgotten_and_the_issue_floor_only_rises() -> None:
    db = Database(memory=True)
    JOURNAL.apply(db, T0)
    reply = CommandReply(b"\x02" * 16, ReplyStatus.OK, result={"balance": 5})
    newer = Command(b"\x02" * 16, "gw", T0, T0 + 300_000, CommandKind.TOP_UP)
    older = Command(b"\x03" * 16, "gw", T0 - 5_000, T0 + 1_000, CommandKind.PROTECT)
    assert replay.issued_floor(db) is None
    replay.record(db, newer, reply, T0 + 10)
    replay.record(db, older, reply, T0 + 20)
    assert replay.issued_floor(db) == T0  # the older one did not lower it
    done = replay.find(db, newer.command_id)
    assert done is not None and done.reply == reply and done.applied_ms == T0 + 10
    assert replay.find(db, b"\x09" * 16) is None
    keep = replay.KEEP_AFTER_EXPIRY_MS
    assert replay.prune(db, T0 + 300_000 + keep - 1) == 1  # only the one that expired first
    assert replay.find(db, older.command_id) is None
    assert replay.find(db, newer.command_id) is not None
    assert replay.prune(db, T0 + 300_000 + keep + 1) == 1
    assert replay.issued_floor(db) == T0  # kept: an old time-set stays refused
