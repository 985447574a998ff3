"""The shared store: PostgreSQL, which every node of a cluster (and every gateway) reaches.

psycopg 3 with its connection pool. A session actor holds at most a couple of connections and
none once it has been quiet for a minute (min_size 0), so hundreds of live sessions do not
each pin a server backend; the pool checks a connection before handing it out, so a database
that restarted is reconnected to instead of failing the next write.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from actors.store_sql import Store, StoreError, Tx

CONNECT_TIMEOUT_S = 10


class _Tx:
    """`?` placeholders (the SQL the stores share) as psycopg's `%s`."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self._conn.execute(_pg(sql), args)


_SQL: dict[str, str] = {}


def _pg(sql: str) -> str:
    converted = _SQL.get(sql)
    if converted is None:
        converted = _SQL[sql] = sql.replace("%", "%%").replace("?", "%s")
    return converted


class PostgresStore(Store):
    LOCK = " FOR UPDATE"  # a fenced write locks the session's row: writers of one session queue
    BLOB = "BYTEA"
    REAL = "DOUBLE PRECISION"
    ACCOUNT_LOCK = "SELECT pg_advisory_xact_lock(hashtext(?))"

    def __init__(self, url: str, *, max_size: int = 2, migrate: bool = True) -> None:
        self.url = url
        self._pool = ConnectionPool(
            url, min_size=0, max_size=max_size, max_idle=60, open=False, name="llmcam",
            timeout=CONNECT_TIMEOUT_S, check=ConnectionPool.check_connection, num_workers=1,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S})
        self._pool.open()
        if not migrate:
            self._check_version()
            return
        with self._transaction() as tx:
            # Two servers starting at once must not both create the tables.
            tx.execute("SELECT pg_advisory_xact_lock(7001)")
            self._migrate(tx)

    @contextmanager
    def _transaction(self) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _Tx(conn)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreError(f"the PostgreSQL store is unreachable: {_reason(exc)}") from exc

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(_pg(sql), args).fetchall()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreError(f"the PostgreSQL store is unreachable: {_reason(exc)}") from exc

    def _columns(self, tx: Tx, table: str) -> set[str]:
        rows = tx.execute("SELECT column_name FROM information_schema.columns "
                          "WHERE table_schema = current_schema() AND table_name=?",
                          (table,)).fetchall()
        return {row[0] for row in rows}

    def close(self) -> None:
        self._pool.close()


def _reason(exc: BaseException) -> str:
    # The first line only: libpq's text may name the host and port, never the password.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
