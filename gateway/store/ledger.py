"""The ledger: accounts, their balances, and every change of a balance (domain.md,
"Top-ups", "Account types"; design.md, "Money and energy").

Money is in 0.0001 yuan, integers only.  A balance changes only together with the
ledger row that says why, in one transaction; :class:`Ledger` runs that transaction
on the store's writer thread with ``durable=True`` (``synchronous=FULL``), so a
future's result means the change is on disk.  The functions taking a ``db`` run
inside a transaction the caller owns (a :meth:`StoreWriter.call`), so a reading and
the charges it causes can be committed together.

Top-ups are applied exactly once by id: a repeat returns the original entry.  A
refused top-up writes nothing.  :func:`check_balances` recomputes every balance from
the ledger.  The ledger is never pruned; its entry id is its position in the batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import date
from enum import IntEnum
from typing import Any, Literal

from sqlite_utils import Database

from gateway.config.model import Account
from gateway.errors import StoreError
from gateway.protocols.batch import LedgerEntry
from gateway.store.db import ReadConnection
from gateway.store.journal import INSERT_SQL, Record, encode
from gateway.store.store import Store

__all__ = [
    "LEDGER",
    "TOP_UP_KINDS",
    "VACANCY",
    "AccountRow",
    "AccountType",
    "Charge",
    "EntryKind",
    "Ledger",
    "LedgerReader",
    "Mismatch",
    "TopUp",
    "TopUpResult",
    "apply_top_up",
    "balance_of",
    "check_balances",
    "ensure_account",
    "entry",
    "journal_with_charges",
    "post",
    "post_charges",
    "sync_accounts",
    "vacancy_exceptions",
]

LEDGER = "ledger"
"""The ledger's table name: its record kind in the outbox and the ``acked`` marks."""

VACANCY = "vacancy"
"""The account charged for meters with no tenant (postpaid, never trips)."""

AccountType = Literal["prepaid", "postpaid", "unbilled"]


class EntryKind(IntEnum):
    """Kinds of ledger entry (wire codes of ``LedgerEntry.kind``, append only)."""

    CHARGE = 1
    """Energy consumed: negative."""
    TOP_UP = 2
    """A normal top-up from the master station: positive."""
    EMERGENCY = 3
    """At the console with an authorisation code, audited: positive."""
    COMPENSATION = 4
    """Positive, with a reason."""
    REDUCTION = 5
    """Negative, with a reason."""
    REVERSAL = 6
    """Cancels a named earlier top-up (minus its amount), once."""
    REFUND = 7
    """The remaining balance paid back (removal): negative."""
    ADJUSTMENT = 8
    """A re-rating (退补) or settlement correction: either sign, with a reason."""


TOP_UP_KINDS = frozenset(
    {
        EntryKind.TOP_UP,
        EntryKind.EMERGENCY,
        EntryKind.COMPENSATION,
        EntryKind.REDUCTION,
        EntryKind.REVERSAL,
        EntryKind.REFUND,
    }
)
"""Kinds applied by :func:`apply_top_up` (by id, exactly once)."""

_REVERSIBLE = frozenset(
    {EntryKind.TOP_UP, EntryKind.EMERGENCY, EntryKind.COMPENSATION, EntryKind.REDUCTION}
)
_COLUMNS = "id, account, ts_ms, kind, amount, balance_after, reference, tariff_version"


@dataclass(frozen=True, slots=True)
class AccountRow:
    """An account as the ledger keeps it."""

    id: str
    type: AccountType
    trip_on_arrears: bool
    balance: int
    opened_day: date


@dataclass(frozen=True, slots=True)
class TopUp:
    """A request to change a balance, identified by ``id`` (its ledger reference).

    ``amount`` is signed as it acts on the balance; for a reversal it is ignored (the
    reversed entry's amount, negated).  ``reverses`` is the id of the top-up reversed.
    """

    id: str
    account: str
    kind: EntryKind
    amount: int
    ts_ms: int
    reason: str = ""
    authorisation: str = ""
    operator: str = ""
    reverses: str | None = None


@dataclass(frozen=True, slots=True)
class TopUpResult:
    """The entry written now (``applied``), the original one (a repeat), or a refusal."""

    entry: LedgerEntry | None
    applied: bool
    refused: str | None = None

    @property
    def duplicate(self) -> bool:
        return self.entry is not None and not self.applied


@dataclass(frozen=True, slots=True)
class Charge:
    """Money consumed by ``account`` (positive: it lowers the balance)."""

    account: str
    ts_ms: int
    amount: int
    reference: str
    tariff_version: int = 0
    meter: str | None = None


@dataclass(frozen=True, slots=True)
class Mismatch:
    """An account whose stored balance or running balances disagree with its ledger."""

    account: str
    stored: int
    recomputed: int
    first_bad_entry: int | None
    """The first entry whose ``balance_after`` is not the running sum (None: all agree)."""


def _int(value: object, what: str) -> int:
    if type(value) is not int or not -(2**63) <= value < 2**63:
        raise StoreError(f"{what} must be a 64-bit integer, not {value!r}")
    return value


def entry(row: tuple[Any, ...]) -> LedgerEntry:
    """A ledger row (``id, account, ts_ms, kind, amount, balance_after, reference,
    tariff_version``) as a :class:`LedgerEntry`."""
    ident, account, ts_ms, kind, amount, after, reference, version = row
    return LedgerEntry(
        int(ident),
        str(account),
        int(ts_ms),
        int(kind),
        int(amount),
        int(after),
        str(reference),
        int(version),
    )


def ensure_account(
    db: Database,
    account: str,
    type: AccountType,
    *,
    trip_on_arrears: bool,
    opened_day: date,
    opened_ms: int,
) -> AccountRow:
    """Create ``account`` (balance 0) or update its type and trip flag; its row."""
    if type not in ("prepaid", "postpaid", "unbilled"):
        raise StoreError(f"unknown account type {type!r}")
    db.execute(
        "INSERT INTO accounts (id, type, trip_on_arrears, opened_day, opened_ms)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET type = excluded.type,"
        " trip_on_arrears = excluded.trip_on_arrears",
        (account, type, int(trip_on_arrears), opened_day.isoformat(), _int(opened_ms, "ts")),
    )
    found = _account(db, account)
    assert found is not None
    return found


def sync_accounts(
    db: Database, accounts: Iterable[Account], *, opened_day: date, opened_ms: int
) -> list[AccountRow]:
    """Create or update the configured accounts and :data:`VACANCY` (postpaid, no trip),
    in the caller's transaction; their rows.  An account no longer configured is kept
    (its money and ledger stay)."""
    rows = [
        ensure_account(
            db,
            a.id,
            a.type,
            trip_on_arrears=a.trip_on_arrears,
            opened_day=opened_day,
            opened_ms=opened_ms,
        )
        for a in accounts
        if a.id != VACANCY
    ]
    rows.append(
        ensure_account(
            db,
            VACANCY,
            "postpaid",
            trip_on_arrears=False,
            opened_day=opened_day,
            opened_ms=opened_ms,
        )
    )
    return rows


def _account(db: Database, account: str) -> AccountRow | None:
    row = db.execute(
        "SELECT id, type, trip_on_arrears, balance, opened_day FROM accounts WHERE id = ?",
        (account,),
    ).fetchone()
    if row is None:
        return None
    return AccountRow(
        str(row[0]), row[1], bool(row[2]), int(row[3]), date.fromisoformat(str(row[4]))
    )


def balance_of(db: Database, account: str) -> int | None:
    """The stored balance of ``account``; None when there is no such account."""
    found = _account(db, account)
    return None if found is None else found.balance


def post(
    db: Database,
    account: str,
    kind: EntryKind,
    amount: int,
    ts_ms: int,
    reference: str,
    *,
    tariff_version: int = 0,
    meter: str | None = None,
    reason: str = "",
    authorisation: str = "",
    operator: str = "",
    reverses: int | None = None,
) -> LedgerEntry:
    """Write one entry and move the balance by ``amount``, in the caller's transaction.

    No checks beyond the schema's (a known account, a unique reference for every kind but
    a charge): use :func:`apply_top_up` and :func:`post_charges`.
    """
    _int(amount, "amount")
    cursor = db.execute(
        "UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING balance",
        (amount, account),
    )
    row = cursor.fetchone()
    if row is None:
        raise StoreError(f"no account {account!r}")
    after = int(row[0])
    cursor = db.execute(
        "INSERT INTO ledger (account, ts_ms, kind, amount, balance_after, reference,"
        " tariff_version, meter, reason, authorisation, operator, reverses)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            account,
            _int(ts_ms, "ts_ms"),
            int(kind),
            amount,
            after,
            reference,
            _int(tariff_version, "tariff_version"),
            meter,
            reason,
            authorisation,
            operator,
            reverses,
        ),
    )
    ident = int(cursor.lastrowid or 0)
    return LedgerEntry(ident, account, ts_ms, int(kind), amount, after, reference, tariff_version)


def _by_reference(db: Database, reference: str) -> tuple[LedgerEntry, str | None] | None:
    """The non-charge entry with ``reference`` and the reference of the one it reverses."""
    row = db.execute(
        f"SELECT {_COLUMNS}, (SELECT r.reference FROM ledger r WHERE r.id = l.reverses)"
        " FROM ledger l WHERE reference = ? AND kind <> ?",
        (reference, int(EntryKind.CHARGE)),
    ).fetchone()
    return None if row is None else (entry(tuple(row[:8])), row[8])


def _refusal(top_up: TopUp, account: AccountRow | None, limit: int | None) -> str | None:
    kind = top_up.kind
    amount = top_up.amount
    if account is None:
        return f"no account {top_up.account!r}"
    if account.type == "unbilled":
        return "an unbilled account has no balance"
    if not top_up.id:
        return "a top-up needs an id"
    if kind in (EntryKind.TOP_UP, EntryKind.EMERGENCY, EntryKind.COMPENSATION) and amount <= 0:
        return f"{kind.name.lower()} must be positive"
    if kind in (EntryKind.REDUCTION, EntryKind.REFUND) and amount >= 0:
        return f"{kind.name.lower()} must be negative"
    if kind in (EntryKind.COMPENSATION, EntryKind.REDUCTION) and not top_up.reason.strip():
        return f"{kind.name.lower()} needs a reason"
    if kind == EntryKind.EMERGENCY and not (
        top_up.authorisation.strip() and top_up.operator.strip()
    ):
        return "an emergency top-up needs an authorisation code and an operator"
    if limit is not None and amount > 0 and account.balance + amount > limit:
        return f"hoarding limit: balance {account.balance} + {amount} would exceed {limit}"
    return None


def apply_top_up(
    db: Database,
    top_up: TopUp,
    *,
    hoarding_limit: int | None = None,
    emergency_limit: int | None = None,
) -> TopUpResult:
    """Apply ``top_up`` once, in the caller's transaction (see :class:`TopUpResult`).

    A repeat of an id already applied returns the original entry and writes nothing,
    whatever else it says.  ``hoarding_limit`` refuses a positive top-up that would
    raise the balance above it; ``emergency_limit`` caps one emergency top-up.
    """
    if not isinstance(top_up.kind, EntryKind) or top_up.kind not in TOP_UP_KINDS:
        return TopUpResult(None, False, f"not a top-up kind: {top_up.kind!r}")
    _int(top_up.amount, "top-up amount")
    _int(top_up.ts_ms, "top-up ts_ms")
    found = _by_reference(db, top_up.id)
    if found is not None:
        return TopUpResult(found[0], False)
    account = _account(db, top_up.account)
    reverses: int | None = None
    if top_up.kind == EntryKind.REVERSAL:
        target = _by_reference(db, top_up.reverses or "") if top_up.reverses else None
        if target is None:
            return TopUpResult(None, False, f"no top-up {top_up.reverses!r} to reverse")
        original = target[0]
        if original.kind not in _REVERSIBLE or original.account != top_up.account:
            return TopUpResult(None, False, f"{top_up.reverses!r} cannot be reversed here")
        done = db.execute("SELECT reference FROM ledger WHERE reverses = ?", (original.entry_id,))
        previous = done.fetchone()
        if previous is not None:
            return TopUpResult(
                None, False, f"{top_up.reverses!r} already reversed by {previous[0]}"
            )
        top_up = _replace_amount(top_up, -original.amount)
        reverses = original.entry_id
    limited = top_up.kind == EntryKind.EMERGENCY and emergency_limit is not None
    if limited and top_up.amount > (emergency_limit or 0):
        return TopUpResult(None, False, f"emergency credit is at most {emergency_limit}")
    refused = _refusal(top_up, account, hoarding_limit)
    if refused is not None:
        return TopUpResult(None, False, refused)
    written = post(
        db,
        top_up.account,
        top_up.kind,
        top_up.amount,
        top_up.ts_ms,
        top_up.id,
        reason=top_up.reason,
        authorisation=top_up.authorisation,
        operator=top_up.operator,
        reverses=reverses,
    )
    return TopUpResult(written, True)


def _replace_amount(top_up: TopUp, amount: int) -> TopUp:
    return TopUp(
        top_up.id,
        top_up.account,
        top_up.kind,
        amount,
        top_up.ts_ms,
        top_up.reason,
        top_up.authorisation,
        top_up.operator,
        top_up.reverses,
    )


def post_charges(db: Database, charges: Iterable[Charge]) -> list[LedgerEntry]:
    """Post each charge (a negative entry) in the caller's transaction; the entries.

    Unbilled accounts are never charged and a zero charge writes nothing; a negative
    charge (a credit) is refused: StoreError, and the caller's transaction rolls back.
    """
    out: list[LedgerEntry] = []
    for charge in charges:
        if _int(charge.amount, "charge amount") < 0:
            raise StoreError(f"a charge cannot be negative: {charge}")
        account = _account(db, charge.account)
        if account is None:
            raise StoreError(f"no account {charge.account!r}")
        if account.type == "unbilled" or charge.amount == 0:
            continue
        out.append(
            post(
                db,
                charge.account,
                EntryKind.CHARGE,
                -charge.amount,
                charge.ts_ms,
                charge.reference,
                tariff_version=charge.tariff_version,
                meter=charge.meter,
            )
        )
    return out


def journal_with_charges(
    db: Database, record: Record, charges: Iterable[Charge]
) -> tuple[int, list[LedgerEntry]]:
    """Journal ``record`` (a reading) and post the charges it causes, in the caller's
    transaction: both or neither.  (its position, the entries)."""
    row = encode(record)
    params = row.params
    if row.meter is not None:
        db.execute("INSERT OR IGNORE INTO meters (name) VALUES (?)", (row.meter,))
        number = db.execute("SELECT id FROM meters WHERE name = ?", (row.meter,)).fetchone()[0]
        params = (int(number), *params)
    position = int(db.execute(INSERT_SQL[row.kind], params).lastrowid or 0)
    return position, post_charges(db, charges)


def check_balances(db: Database) -> list[Mismatch]:
    """Recompute every balance from the ledger; the accounts that disagree."""
    out: list[Mismatch] = []
    for account, stored in db.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall():
        running = 0
        first_bad: int | None = None
        rows = db.execute(
            "SELECT id, amount, balance_after FROM ledger WHERE account = ? ORDER BY id",
            (account,),
        )
        for ident, amount, after in rows:
            running += int(amount)
            if first_bad is None and int(after) != running:
                first_bad = int(ident)
        if running != int(stored) or first_bad is not None:
            out.append(Mismatch(str(account), int(stored), running, first_bad))
    return out


def vacancy_exceptions(db: Database, from_ms: int, to_ms: int) -> list[tuple[str, int, int]]:
    """Meters charged to :data:`VACANCY` with ``from_ms <= ts_ms < to_ms``: (meter,
    charges, money) per meter, for the daily exception list."""
    rows = db.execute(
        "SELECT coalesce(meter, ''), count(*), -sum(amount) FROM ledger WHERE account = ?"
        " AND kind = ? AND ts_ms >= ? AND ts_ms < ? GROUP BY meter ORDER BY meter",
        (VACANCY, int(EntryKind.CHARGE), from_ms, to_ms),
    ).fetchall()
    return [(str(m), int(n), int(total)) for m, n, total in rows]


class Ledger:
    """The ledger of ``store``: each call one durable transaction on its writer thread."""

    def __init__(
        self,
        store: Store,
        *,
        hoarding_limit: int | None = None,
        emergency_limit: int | None = None,
    ) -> None:
        self.store = store
        self.hoarding_limit = hoarding_limit
        self.emergency_limit = emergency_limit

    def open_account(
        self,
        account: str,
        type: AccountType,
        *,
        trip_on_arrears: bool,
        opened_day: date,
        opened_ms: int,
    ) -> Future[AccountRow]:
        def run(db: Database) -> AccountRow:
            return ensure_account(
                db,
                account,
                type,
                trip_on_arrears=trip_on_arrears,
                opened_day=opened_day,
                opened_ms=opened_ms,
            )

        return self.store.writer.call(run, durable=True)

    def sync_accounts(
        self, accounts: Iterable[Account], *, opened_day: date, opened_ms: int
    ) -> Future[list[AccountRow]]:
        """:func:`sync_accounts` in one durable transaction."""
        items = list(accounts)

        def run(db: Database) -> list[AccountRow]:
            return sync_accounts(db, items, opened_day=opened_day, opened_ms=opened_ms)

        return self.store.writer.call(run, durable=True)

    def top_up(self, top_up: TopUp) -> Future[TopUpResult]:
        """Apply ``top_up`` once; the result once it is on disk."""

        def run(db: Database) -> TopUpResult:
            return apply_top_up(
                db,
                top_up,
                hoarding_limit=self.hoarding_limit,
                emergency_limit=self.emergency_limit,
            )

        return self.store.writer.call(run, durable=True)

    def charge(self, charges: Iterable[Charge]) -> Future[list[LedgerEntry]]:
        """Post ``charges`` together (all or none); the entries once on disk."""
        items = list(charges)

        def run(db: Database) -> list[LedgerEntry]:
            return post_charges(db, items)

        return self.store.writer.call(run, durable=True)

    def journal_with_charges(
        self, record: Record, charges: Iterable[Charge]
    ) -> Future[tuple[int, list[LedgerEntry]]]:
        """:func:`journal_with_charges` in one durable transaction."""
        items = list(charges)

        def run(db: Database) -> tuple[int, list[LedgerEntry]]:
            return journal_with_charges(db, record, items)

        return self.store.writer.call(run, durable=True)

    def adjust(
        self,
        account: str,
        amount: int,
        ts_ms: int,
        reference: str,
        reason: str,
        *,
        tariff_version: int = 0,
    ) -> Future[TopUpResult]:
        """Post one adjustment (退补) once by ``reference``; a repeat returns the original."""

        def run(db: Database) -> TopUpResult:
            found = _by_reference(db, reference)
            if found is not None:
                return TopUpResult(found[0], False)
            if not reason.strip():
                return TopUpResult(None, False, "an adjustment needs a reason")
            written = post(
                db,
                account,
                EntryKind.ADJUSTMENT,
                amount,
                ts_ms,
                reference,
                tariff_version=tariff_version,
                reason=reason,
            )
            return TopUpResult(written, True)

        return self.store.writer.call(run, durable=True)

    def check(self) -> Future[list[Mismatch]]:
        """:func:`check_balances` on the writer's connection (a consistent view)."""
        return self.store.writer.call(check_balances)


class LedgerReader(ReadConnection):
    """The ledger, read (its own connection; one thread at a time)."""

    _what = "ledger"

    def entries(self, after: int = 0, limit: int = 1000) -> list[LedgerEntry]:
        """Entries after position ``after``, in order."""
        rows = self._all(
            f"SELECT {_COLUMNS} FROM ledger WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        )
        return [entry(tuple(row)) for row in rows]

    def accounts(self) -> list[AccountRow]:
        rows = self._all(
            "SELECT id, type, trip_on_arrears, balance, opened_day FROM accounts ORDER BY id"
        )
        return [
            AccountRow(str(r[0]), r[1], bool(r[2]), int(r[3]), date.fromisoformat(str(r[4])))
            for r in rows
        ]

    def balance(self, account: str) -> int | None:
        rows = self._all("SELECT balance FROM accounts WHERE id = ?", (account,))
        return int(rows[0][0]) if rows else None

    def top_up(self, top_up_id: str) -> LedgerEntry | None:
        """The entry applied for ``top_up_id`` (any kind but a charge), if any."""
        rows = self._all(
            f"SELECT {_COLUMNS} FROM ledger WHERE reference = ? AND kind <> ?",
            (top_up_id, int(EntryKind.CHARGE)),
        )
        return entry(tuple(rows[0])) if rows else None
