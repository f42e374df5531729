"""Numbered schema migrations, registered as functions, recorded in ``schema_version``.

Each migration runs in its own transaction together with the row that records it,
so a migration is applied entirely, once, or not at all.  Versions are 1, 2, 3 ...
with no gaps; a store whose recorded version is newer than the software's refuses
to open (:class:`StoreNewer`).  Add a migration by appending a function::

    @JOURNAL(2, "ledger tables")
    def _ledger(db: Database) -> None:
        db.execute("CREATE TABLE ledger (...)")
"""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database

__all__ = ["JOURNAL", "Migration", "Migrations", "StoreNewer"]

Migration = Callable[[Database], None]


class StoreNewer(Exception):
    """The store was written by newer software (its schema version is unknown here)."""


class Migrations:
    """An ordered set of numbered migrations, applied by :meth:`apply`."""

    table = "schema_version"

    def __init__(self) -> None:
        self._steps: dict[int, tuple[str, Migration]] = {}

    def __call__(self, version: int, name: str) -> Callable[[Migration], Migration]:
        """Decorator: register the function as migration ``version``."""

        def register(function: Migration) -> Migration:
            self.register(version, name, function)
            return function

        return register

    def register(self, version: int, name: str, function: Migration) -> None:
        """Add migration ``version``; versions must run 1, 2, 3 ... in order."""
        if version != len(self._steps) + 1:
            raise ValueError(f"migration {version} registered after {len(self._steps)}")
        self._steps[version] = (name, function)

    @property
    def latest(self) -> int:
        return len(self._steps)

    def steps(self) -> list[tuple[int, str, Migration]]:
        return [(version, name, fn) for version, (name, fn) in self._steps.items()]

    def applied(self, db: Database) -> dict[int, int]:
        """Recorded migrations: version -> applied time (UTC ms).  Empty for a new file."""
        if self.table not in db.table_names():
            return {}
        rows = db.execute(f"SELECT version, applied_ms FROM {self.table}").fetchall()
        return {int(version): int(applied) for version, applied in rows}

    def apply(self, db: Database, now_ms: int) -> list[int]:
        """Run every migration not yet recorded, in order; the versions run now."""
        with db.atomic():
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)"
            )
        done = self.applied(db)
        newest = max(done, default=0)
        if newest > self.latest:
            raise StoreNewer(
                f"store schema version {newest} is newer than this software's {self.latest}"
            )
        ran: list[int] = []
        for version, name, function in self.steps():
            if version in done:
                continue
            with db.atomic():
                function(db)
                db.execute(
                    f"INSERT INTO {self.table} (version, name, applied_ms) VALUES (?, ?, ?)",
                    (version, name, now_ms),
                )
            ran.append(version)
        return ran


JOURNAL = Migrations()
"""The gateway store's migrations."""


@JOURNAL(1, "journal tables")
def _journal_tables(db: Database) -> None:
    # Journal positions are rowids.  Without AUTOINCREMENT a new rowid is max(rowid)+1,
    # so positions only grow as long as the newest row of a table is never deleted:
    # retention keeps it (readings); events and health are never deleted; a replaced
    # task result is deleted and re-inserted, so that table uses AUTOINCREMENT.
    for statement in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
        "CREATE TABLE meters (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, meter INTEGER NOT NULL,"
        " ts_ms INTEGER NOT NULL, flags INTEGER NOT NULL, vals BLOB)",
        "CREATE TABLE events (id INTEGER PRIMARY KEY, meter INTEGER NOT NULL,"
        " ts_ms INTEGER NOT NULL, code INTEGER NOT NULL, detail BLOB)",
        "CREATE TABLE task_results (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " meter INTEGER NOT NULL, kind INTEGER NOT NULL, business_day TEXT NOT NULL,"
        " status INTEGER NOT NULL, freeze_ts_ms INTEGER, vals BLOB,"
        " UNIQUE (meter, kind, business_day))",
        "CREATE TABLE health (id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL,"
        " kind INTEGER NOT NULL, vals BLOB)",
        "CREATE TABLE acked (kind TEXT PRIMARY KEY, up_to INTEGER NOT NULL)",
    ):
        db.execute(statement)


@JOURNAL(2, "outbox")
def _outbox(db: Database) -> None:
    # One row per batch of the current epoch (seq from 1, never reused: the last seq
    # is kept in meta as ``outbox_seq``).  For each kind the batch holds the journal
    # positions p with <kind>_from < p <= <kind>_to (empty when equal).  The encoded
    # payload is kept, so a re-send is byte-identical whatever the journal does later.
    db.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL,"
        " readings_from INTEGER NOT NULL, readings_to INTEGER NOT NULL,"
        " events_from INTEGER NOT NULL, events_to INTEGER NOT NULL,"
        " tasks_from INTEGER NOT NULL, tasks_to INTEGER NOT NULL,"
        " health_from INTEGER NOT NULL, health_to INTEGER NOT NULL,"
        " records INTEGER NOT NULL, payload BLOB NOT NULL,"
        " sent_count INTEGER NOT NULL DEFAULT 0, acked INTEGER NOT NULL DEFAULT 0)"
    )


@JOURNAL(3, "accounts and ledger")
def _ledger(db: Database) -> None:
    # The ledger is money: never deleted, so its rowid (the entry id, its position) only
    # grows.  Every row but a charge (kind 1) carries a unique reference: a top-up's id is
    # applied once, an adjustment's key once; ``reverses`` names the entry a reversal
    # cancels, once.  ``accounts.balance`` always equals the sum of its ledger amounts.
    for statement in (
        "CREATE TABLE accounts (id TEXT PRIMARY KEY,"
        " type TEXT NOT NULL CHECK (type IN ('prepaid', 'postpaid', 'unbilled')),"
        " trip_on_arrears INTEGER NOT NULL, balance INTEGER NOT NULL DEFAULT 0,"
        " opened_day TEXT NOT NULL, opened_ms INTEGER NOT NULL)",
        "CREATE TABLE ledger (id INTEGER PRIMARY KEY, account TEXT NOT NULL"
        " REFERENCES accounts (id), ts_ms INTEGER NOT NULL, kind INTEGER NOT NULL,"
        " amount INTEGER NOT NULL, balance_after INTEGER NOT NULL, reference TEXT NOT NULL,"
        " tariff_version INTEGER NOT NULL DEFAULT 0, meter TEXT, reason TEXT NOT NULL"
        " DEFAULT '', authorisation TEXT NOT NULL DEFAULT '', operator TEXT NOT NULL"
        " DEFAULT '', reverses INTEGER REFERENCES ledger (id))",
        "CREATE UNIQUE INDEX ledger_reference ON ledger (reference) WHERE kind <> 1",
        "CREATE UNIQUE INDEX ledger_reverses ON ledger (reverses) WHERE reverses IS NOT NULL",
        "CREATE INDEX ledger_account ON ledger (account, id)",
        "ALTER TABLE outbox ADD COLUMN ledger_from INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE outbox ADD COLUMN ledger_to INTEGER NOT NULL DEFAULT 0",
    ):
        db.execute(statement)


@JOURNAL(4, "rating state")
def _rating(db: Database) -> None:
    # Per meter: the last rated reading (time, forward energy x ratio) and the rounding
    # accumulators (CBOR list of [tariff, version, key, energy_wh, posted]); per account
    # the billing-year consumption.  Written in the reading's own transaction.  A charge's
    # reference (meter:position:line) is unique among charges: a replay cannot re-post.
    for statement in (
        "CREATE TABLE rating_state (meter TEXT PRIMARY KEY, last_ts_ms INTEGER NOT NULL,"
        " last_energy_wh INTEGER NOT NULL, totals BLOB NOT NULL)",
        "CREATE TABLE rating_year (account TEXT PRIMARY KEY, year_wh INTEGER NOT NULL)",
        "CREATE UNIQUE INDEX ledger_charge_reference ON ledger (reference) WHERE kind = 1",
    ):
        db.execute(statement)


@JOURNAL(5, "command replies")
def _commands(db: Database) -> None:
    # Every command that passed the envelope checks (signature, gateway, expiry) and was
    # carried out, applied or failed, by its id, with the reply sent for it: a repeat of
    # the id is answered from here and changes nothing.  Kept until ``keep_until_ms`` (well
    # past the command's expiry, after which its envelope is refused anyway); never kept
    # less.  ``meta`` key ``commands_issued_ms`` holds the newest issue time applied.
    for statement in (
        "CREATE TABLE commands (id BLOB PRIMARY KEY, kind INTEGER NOT NULL,"
        " issued_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL,"
        " applied_ms INTEGER NOT NULL, keep_until_ms INTEGER NOT NULL,"
        " status INTEGER NOT NULL, reply BLOB NOT NULL)",
        "CREATE INDEX commands_keep ON commands (keep_until_ms)",
    ):
        db.execute(statement)


@JOURNAL(6, "relay state")
def _relays(db: Database) -> None:
    # The relays' own memory (gateway.relays): an account's protect mode (保电) once a
    # command set it (it then overrides the config's ``protect``), and per meter the relay
    # position last commanded and whether the meter confirmed it, so that a restart can
    # reconcile the meters with the ledger.  ``meta`` key ``relays_storm_ms`` holds the
    # time a trip storm stopped tripping (absent: not stopped).
    for statement in (
        "CREATE TABLE relay_protect (account TEXT PRIMARY KEY, protect INTEGER NOT NULL,"
        " ts_ms INTEGER NOT NULL)",
        "CREATE TABLE relay_state (meter TEXT PRIMARY KEY, account TEXT,"
        " position TEXT NOT NULL CHECK (position IN ('open', 'closed')),"
        " confirmed INTEGER NOT NULL, balance INTEGER, ts_ms INTEGER NOT NULL)",
    ):
        db.execute(statement)


@JOURNAL(7, "meter lifecycle and settlement")
def _lifecycle(db: Database) -> None:
    # meter_records: a meter's standing where the store knows better than the config
    # (gateway.store.meters): removed, replaced (by ``replaced_by``), held (its number
    # changed without a work order: no charge until confirmed) or active again.
    # lifecycle_ops: each lifecycle operation once by its reference (a repeat is refused),
    # with what it did (CBOR).  settlements: one snapshot per (kind, period, account),
    # written once.
    for statement in (
        "CREATE TABLE meter_records (meter TEXT PRIMARY KEY, account TEXT,"
        " status TEXT NOT NULL CHECK (status IN ('active', 'removed', 'replaced', 'held')),"
        " ratio INTEGER NOT NULL DEFAULT 1, since_ms INTEGER NOT NULL,"
        " replaced_by TEXT, replaces TEXT, reason TEXT NOT NULL DEFAULT '')",
        "CREATE TABLE lifecycle_ops (id INTEGER PRIMARY KEY, reference TEXT NOT NULL UNIQUE,"
        " kind TEXT NOT NULL, meter TEXT NOT NULL, ts_ms INTEGER NOT NULL, result BLOB NOT NULL)",
        "CREATE TABLE settlements (id INTEGER PRIMARY KEY,"
        " kind TEXT NOT NULL CHECK (kind IN ('monthly', 'yearly')), period TEXT NOT NULL,"
        " account TEXT NOT NULL, at_ms INTEGER NOT NULL, taken_ms INTEGER NOT NULL,"
        " balance INTEGER NOT NULL, ledger_id INTEGER NOT NULL, tariff TEXT,"
        " tariff_version INTEGER, year_wh INTEGER, meters BLOB NOT NULL,"
        " UNIQUE (kind, period, account))",
    ):
        db.execute(statement)


@JOURNAL(8, "prepaid state and per-tariff registers")
def _prepaid(db: Database) -> None:
    # gateway.charging: per meter the last per-tariff registers (CBOR map slot -> Wh x
    # ratio, NULL: the meter keeps none), for rating by the meter's own time-of-use
    # registers; per account when its billing-year tier total next resets (NULL: not yet
    # known, set at its first rating), its prepaid state (gateway.prepaid) and whether it
    # is held tripped, written in the transaction of the change that caused it, so a
    # restart resumes them; thresholds set by command (account '' is the default for
    # every account), overriding the configuration's.
    for statement in (
        "ALTER TABLE rating_state ADD COLUMN last_slots BLOB",
        "ALTER TABLE rating_year ADD COLUMN year_end_ms INTEGER",
        "CREATE TABLE prepaid_state (account TEXT PRIMARY KEY, state TEXT NOT NULL,"
        " tripped INTEGER NOT NULL, balance INTEGER NOT NULL, ts_ms INTEGER NOT NULL)",
        "CREATE TABLE prepaid_thresholds (account TEXT PRIMARY KEY, alarm1 INTEGER NOT NULL,"
        " alarm2 INTEGER NOT NULL, overdraft_limit INTEGER NOT NULL,"
        " close_allow INTEGER NOT NULL, emergency_credit INTEGER NOT NULL,"
        " ts_ms INTEGER NOT NULL)",
    ):
        db.execute(statement)


@JOURNAL(9, "tariff versions received by command")
def _tariff_versions(db: Database) -> None:
    # gateway.tariff_updates: every tariff version the master sent (TARIFF command), once
    # per (tariff, version), as its command arguments (CBOR; read back through the same
    # validation as the configuration's); the book is the config's versions and these.
    # ``adjustments`` (CBOR) is what a late version's re-rating did in the same
    # transaction: its ledger entries, the accounts re-rated and the last reading
    # position covered (gateway.tariff_updates.versions.store_version).
    db.execute(
        "CREATE TABLE tariff_versions (tariff TEXT NOT NULL, version INTEGER NOT NULL,"
        " effective_ms INTEGER NOT NULL, kind TEXT NOT NULL, args BLOB NOT NULL,"
        " received_ms INTEGER NOT NULL, adjustments BLOB NOT NULL,"
        " PRIMARY KEY (tariff, version))"
    )


@JOURNAL(10, "closed billing year, account records, vacancy lists")
def _accounts_and_years(db: Database) -> None:
    # gateway.charging: the account's tier total of the billing year that closed at its
    # last yearly reset (closed_end_ms: that reset, UTC ms), for the yearly record.
    # gateway.lifecycle.accounts: accounts opened, changed or closed by command, overriding
    # the configuration's (type, tariff, trip flag, opening day; status open | closed).
    # gateway.tasks.vacancy: the days whose vacancy exception list was written (once each).
    for statement in (
        "ALTER TABLE rating_year ADD COLUMN closed_wh INTEGER",
        "ALTER TABLE rating_year ADD COLUMN closed_end_ms INTEGER",
        "CREATE TABLE account_records (id TEXT PRIMARY KEY,"
        " type TEXT NOT NULL CHECK (type IN ('prepaid', 'postpaid', 'unbilled')),"
        " tariff TEXT, trip_on_arrears INTEGER NOT NULL, opened TEXT,"
        " status TEXT NOT NULL CHECK (status IN ('open', 'closed')),"
        " since_ms INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '')",
        "CREATE TABLE vacancy_lists (day TEXT PRIMARY KEY, taken_ms INTEGER NOT NULL,"
        " meters INTEGER NOT NULL, amount INTEGER NOT NULL)",
    ):
        db.execute(statement)


@JOURNAL(11, "a meter's nameplate number from its work order")
def _work_order_numbers(db: Database) -> None:
    # gateway.store.meters: the nameplate number (DL/T 645 DI 04000402, 12 digits) a
    # replacement or addition said the meter at this place has (NULL: not given); a
    # METER_NUMBER_CHANGED to it is the work order's swap, not held (gateway.charging).
    db.execute("ALTER TABLE meter_records ADD COLUMN meter_number TEXT")
