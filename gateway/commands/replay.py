"""The replay guard: every command carried out, by id, with the reply it got (store
migration 5, table ``commands``).

Functions taking a ``db`` run inside a transaction the caller owns (a
:meth:`~gateway.store.writer.StoreWriter.call`), so a command's effect and its row can
commit together.  A command id is kept until ``keep_until_ms``: its expiry plus
:data:`KEEP_AFTER_EXPIRY_MS`.  Once a command has expired the envelope check refuses
it anyway; the margin covers a gateway clock that was set back.  ``meta`` key
:data:`ISSUED_KEY` holds the newest issue time of a command carried out (the floor
a time-set must not go under while the clock is untrusted).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_utils import Database

from gateway.protocols.command import Command, CommandReply, decode_reply, encode_reply

__all__ = [
    "ISSUED_KEY",
    "KEEP_AFTER_EXPIRY_MS",
    "Done",
    "find",
    "issued_floor",
    "prune",
    "record",
]

KEEP_AFTER_EXPIRY_MS = 7 * 86_400_000
ISSUED_KEY = "commands_issued_ms"


@dataclass(frozen=True, slots=True)
class Done:
    """A command already carried out: its reply and when it was applied (gateway ms)."""

    reply: CommandReply
    applied_ms: int


def find(db: Database, command_id: bytes) -> Done | None:
    row = db.execute(
        "SELECT reply, applied_ms FROM commands WHERE id = ?", (command_id,)
    ).fetchone()
    return None if row is None else Done(decode_reply(bytes(row[0])), int(row[1]))


def record(db: Database, cmd: Command, reply: CommandReply, applied_ms: int) -> None:
    """Keep ``cmd``'s id with ``reply`` (IntegrityError if the id is already kept)."""
    db.execute(
        "INSERT INTO commands (id, kind, issued_ms, expires_ms, applied_ms, keep_until_ms,"
        " status, reply) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            cmd.command_id,
            int(cmd.kind),
            cmd.issued_at_ms,
            cmd.expires_at_ms,
            applied_ms,
            max(cmd.expires_at_ms, applied_ms) + KEEP_AFTER_EXPIRY_MS,
            int(reply.status),
            encode_reply(reply),
        ),
    )
    floor = issued_floor(db)
    if floor is None or cmd.issued_at_ms > floor:
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (ISSUED_KEY, cmd.issued_at_ms),
        )


def issued_floor(db: Database) -> int | None:
    """The newest issue time of a command carried out here (None: none yet)."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (ISSUED_KEY,)).fetchone()
    return None if row is None else int(row[0])


def prune(db: Database, now_ms: int) -> int:
    """Forget the ids kept until before ``now_ms`` (call only with a trusted clock)."""
    cursor = db.execute("DELETE FROM commands WHERE keep_until_ms < ?", (now_ms,))
    return int(cursor.rowcount)
