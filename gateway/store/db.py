"""The store file: connections, pragmas, integrity check, moving a corrupt file aside.

Every SQLite error leaves this package as :class:`~gateway.errors.StoreError` (the
original kept as ``__cause__``).  Only damage (SQLITE_CORRUPT, SQLITE_NOTADB, a failed
``quick_check``, a file that is not SQLite or not a gateway store) makes
:func:`open_database` move the file aside; a locked, unreadable or newer-schema store
is an error, never moved.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from sqlite_utils import Database

from gateway.errors import StoreCorrupt, StoreError
from gateway.store.migrations import JOURNAL, Migrations, StoreNewer

__all__ = [
    "PAGE_SIZE",
    "SQLITE_HEADER",
    "Check",
    "Opened",
    "ReadConnection",
    "check_integrity",
    "connect",
    "move_aside",
    "open_database",
    "store_errors",
    "used_bytes",
]

SQLITE_HEADER = b"SQLite format 3\x00"
Check = Literal["quick", "full", "none"]

_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)
PAGE_SIZE = 1024
"""Page size of a new store.  Each commit writes whole pages to the WAL; 1 KiB pages
write a third of what 4 KiB pages do per reading at one commit a second
(``bench/bench_store.py``), for 4 % more bytes stored."""
_WAL_LIMIT = 4 * 1024 * 1024
"""The WAL is truncated to this after a checkpoint (``journal_size_limit``)."""


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Map sqlite3 errors raised inside the block to :class:`StoreError` naming ``what``."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"{what}: {exc}") from exc


def connect(path: Path, *, readonly: bool = False) -> Database:
    """A sqlite-utils Database on ``path`` usable from any one thread at a time.

    Writers get WAL and ``synchronous=NORMAL``; readers get ``query_only``.
    """
    if readonly:  # never create a file a reader was pointed at by mistake
        target, uri = f"{path.resolve().as_uri()}?mode=rw", True
    else:
        target, uri = str(path), False
    conn = sqlite3.connect(target, timeout=5.0, check_same_thread=False, uri=uri)
    try:
        db = Database(conn, recursive_triggers=False, execute_plugins=False)
        db.execute("PRAGMA busy_timeout=5000")
        if readonly:
            db.execute("PRAGMA query_only=1")
        else:
            if db.execute("PRAGMA page_count").fetchone()[0] == 0:
                db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.enable_wal()
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA temp_store=MEMORY")
            db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
    except BaseException:
        conn.close()
        raise
    return db


def check_integrity(db: Database, check: Check) -> str | None:
    """None when the file passes ``quick_check`` (or ``integrity_check``), else the problems."""
    if check == "none":
        return None
    pragma = "quick_check" if check == "quick" else "integrity_check"
    rows = [str(row[0]) for row in db.execute(f"PRAGMA {pragma}").fetchall()]
    return None if rows == ["ok"] else "; ".join(rows[:5])


def used_bytes(db: Database) -> int:
    """Bytes of the database pages in use (file pages minus free pages; WAL not counted)."""
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    size = int(db.execute("PRAGMA page_size").fetchone()[0])
    return (pages - free) * size


def move_aside(path: Path, when: datetime) -> Path:
    """Rename ``path`` (and its -wal, -shm) to ``<name>.corrupt-<UTC stamp>``; the new path."""
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    serial = 1
    while any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
        serial += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{serial}")
    for suffix in ("-wal", "-shm", ""):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{target}{suffix}")
    return target


@dataclass(frozen=True, slots=True)
class Opened:
    """An open, checked, migrated store connection and what it took to get there."""

    db: Database
    created: bool
    """The file was created now (absent, empty, or replaced after damage)."""
    moved_aside: Path | None
    """Where a damaged file was moved, or None."""
    damage: str | None
    """Why it was moved aside."""
    applied_migrations: tuple[int, ...]


def open_database(
    path: Path,
    *,
    now_ms: Callable[[], int],
    check: Check = "quick",
    migrations: Migrations = JOURNAL,
) -> Opened:
    """Open (or create) the store at ``path``: check it, move it aside if damaged, migrate.

    Raises :class:`StoreCorrupt` only if a fresh store cannot be created in place of a
    damaged one, :class:`StoreError` for anything else that stops the store opening.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists() and path.stat().st_size > 0
        damage = _header_damage(path) if existed else None
    except OSError as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    if damage is None:
        try:
            db = connect(path)
        except sqlite3.Error as exc:
            damage = _damage(exc)
            if damage is None:
                raise StoreError(f"cannot open store {path}: {exc}") from exc
        else:
            try:
                damage, applied = _check_and_migrate(db, check, migrations, now_ms)
            except BaseException:
                db.close()
                raise
            if damage is None:
                return Opened(db, not existed, None, None, applied)
            db.close()
    try:
        moved = move_aside(path, datetime.fromtimestamp(now_ms() / 1000, UTC))
    except OSError as exc:
        raise StoreCorrupt(f"store {path} is damaged ({damage}) and cannot be moved") from exc
    try:
        db = connect(path)
        try:
            failure, applied = _check_and_migrate(db, "none", migrations, now_ms)
        except BaseException:
            db.close()
            raise
    except (sqlite3.Error, StoreError) as exc:
        raise StoreCorrupt(f"store {path} was damaged ({damage}) and cannot be recreated") from exc
    if failure is not None:
        db.close()
        raise StoreCorrupt(f"store {path} was damaged ({damage}); the new one too ({failure})")
    return Opened(db, True, moved, damage, applied)


def _header_damage(path: Path) -> str | None:
    with path.open("rb") as stream:
        head = stream.read(len(SQLITE_HEADER))
    return None if head == SQLITE_HEADER else "not an SQLite file"


def _damage(exc: sqlite3.Error) -> str | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _CORRUPT_CODES:
        return str(exc)
    return None


def _check_and_migrate(
    db: Database, check: Check, migrations: Migrations, now_ms: Callable[[], int]
) -> tuple[str | None, tuple[int, ...]]:
    """(None, migrations run) when the store is sound and migrated; (damage, ()) otherwise."""
    try:
        problems = check_integrity(db, check)
        if problems is not None:
            return f"integrity check failed: {problems}", ()
        tables = set(db.table_names())
        if tables and migrations.table not in tables:
            return f"not a gateway store (tables: {', '.join(sorted(tables)[:5])})", ()
        return None, tuple(migrations.apply(db, now_ms()))
    except StoreNewer as exc:
        raise StoreError(str(exc)) from exc
    except sqlite3.Error as exc:
        damage = _damage(exc)
        if damage is None:
            raise StoreError(f"cannot open store: {exc}") from exc
        return damage, ()


class ReadConnection:
    """A read-only connection of its own (WAL readers never block the writer).

    Use from one thread at a time; close it (or use it as a context manager).
    Subclasses query through :meth:`_all`; ``_what`` names them in errors.
    """

    _what = "store"

    def __init__(self, path: str | Path) -> None:
        with store_errors(f"cannot open store {path} for reading"):
            self._db = connect(Path(path), readonly=True)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _all(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with store_errors(f"{self._what} read failed"):
            return list(self._db.execute(sql, params).fetchall())
