"""The durable truth behind every session: `open_store` picks the database LLMCAM_DB names.

The SQL both databases share, the epoch fence and the records are in actors/store/sql.py;
SQLite (actors/store/sqlite.py, the embedded default) and PostgreSQL (actors/store/postgres.py,
what a cluster uses) supply connections and transactions. Importing this module loads neither
driver: each is imported when a store of its kind is opened.
"""

from __future__ import annotations

from actors.store.sql import (
    SCHEMA_VERSION,
    Fenced,
    FileInfo,
    Store,
    StoredMessage,
    StoreError,
)

__all__ = ["SCHEMA_VERSION", "Fenced", "FileInfo", "Store", "StoreError", "StoredMessage",
           "is_shared", "open_store"]


def open_store(url: str, *, migrate: bool = True) -> Store:
    """The store named by LLMCAM_DB: a `postgresql://` URL, else an SQLite path. The gateway
    migrates the schema; session actors (`migrate=False`) only check its version."""
    if is_shared(url):
        from actors.store.postgres import PostgresStore

        return PostgresStore(url, migrate=migrate)
    from pathlib import Path

    from actors.store.sqlite import SQLiteStore

    return SQLiteStore(Path(url.removeprefix("sqlite:///")), migrate=migrate)


def is_shared(url: str) -> bool:
    """True for a store every node of a cluster reaches (PostgreSQL), False for a local file."""
    return url.startswith(("postgresql://", "postgres://"))
