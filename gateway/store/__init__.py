"""SQLite store (journal, outbox, ledger, migrations).  Built in Step 4; empty so far."""

__all__: list[str] = []
