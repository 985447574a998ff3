"""The embedded store: one SQLite file (WAL) on the gateway's node, shared by its actors."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from actors.store.sql import Store, StoreError, Tx


class SQLiteStore(Store):
    """Many session actors (processes) write to one file at once: WAL, a busy timeout, and
    BEGIN IMMEDIATE so a fenced write holds the write lock from its first statement."""

    def __init__(self, path: Path, *, migrate: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()  # one connection, used from the loop and worker threads
        try:
            self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False,
                                         isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            raise StoreError(f"LLMCAM_DB: cannot open the SQLite file {path}: {exc}") from exc
        if migrate:
            with self._transaction() as tx:
                self._migrate(tx)
        else:
            self._check_version()

    @contextmanager
    def _transaction(self) -> Iterator[Tx]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn  # type: ignore[misc]
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def _columns(self, tx: Tx, table: str) -> set[str]:
        return {row[1] for row in tx.execute(f"PRAGMA table_info({table})").fetchall()}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
