"""The shared store: PostgreSQL, which every node of a cluster (and every gateway) reaches.

psycopg 3 with its connection pool. A session actor holds at most a couple of connections and
none once it has been quiet for a minute (min_size 0), so hundreds of live sessions do not
each pin a server backend; the pool checks a connection before handing it out, so a database
that restarted is reconnected to instead of failing the next write.

The URL carries the database password, and libpq quotes a URL it cannot parse word for word
(into the exception, and the pool logs each failed connection). So the URL is parsed here
first, before the pool sees it: a malformed one is a StoreError that shows it with its password
as `***`; every error this store raises has the password scrubbed out (and no cause that
could quote it); and the psycopg loggers scrub it from their records too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from actors.store.sql import Store, StoreError, Tx

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
        validate(url)  # before psycopg (which would quote a malformed URL) sees it
        self.url = redact(url)  # what may be shown: no password
        self._pool = ConnectionPool(
            url, min_size=0, max_size=max_size, max_idle=60, open=False, name="llmcam",
            timeout=CONNECT_TIMEOUT_S, check=ConnectionPool.check_connection, num_workers=1,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S})
        try:
            self._pool.open()
            if not migrate:
                self._check_version()
                return
            with self._transaction() as tx:
                # Two servers starting at once must not both create the tables.
                tx.execute("SELECT pg_advisory_xact_lock(7001)")
                self._migrate(tx)
        except BaseException:
            self._pool.close()  # its workers would go on trying (and logging) in the background
            raise

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    @contextmanager
    def _transaction(self) -> Iterator[Tx]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield _Tx(conn)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreError(f"the PostgreSQL store is unreachable: {_reason(exc)}") from None

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            with self._pool.connection() as conn:
                return conn.execute(_pg(sql), args).fetchall()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreError(f"the PostgreSQL store is unreachable: {_reason(exc)}") from None

    def _columns(self, tx: Tx, table: str) -> set[str]:
        rows = tx.execute("SELECT column_name FROM information_schema.columns "
                          "WHERE table_schema = current_schema() AND table_name=?",
                          (table,)).fetchall()
        return {row[0] for row in rows}

    def close(self) -> None:
        self._pool.close()


def _reason(exc: BaseException) -> str:
    # The first line only (libpq's text may name the host and port), and no password in it.
    return scrub((str(exc).strip().splitlines() or [type(exc).__name__])[0])[:200]


_SECRETS: set[str] = set()  # every password a URL handed to this process carried


def _passwords(url: str) -> set[str]:
    """The password a URL carries, found without parsing it strictly (it may be malformed),
    so rather too much than too little: each `user:password@` reading of its authority (with
    and without percent-decoding) and each `password=` query parameter."""
    rest = url.partition("://")[2]
    found: set[str] = set()
    for at in (m.start() for m in re.finditer("@", rest)):
        userinfo = rest[:at]
        if ":" in userinfo:
            found.add(userinfo.split(":", 1)[1])
    for value in re.findall(r"password=([^&#]*)", url, flags=re.IGNORECASE):
        found.add(value)
    with_decoded = found | {unquote(p) for p in found}
    return {p for p in with_decoded if p}


def scrub(text: str) -> str:
    """`text` with every password this process was handed replaced by `***`."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def redact(url: str) -> str:
    """The URL as it may be shown: its userinfo's password and any `password=` as `***`."""
    _SECRETS.update(_passwords(url))
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        rest = rest[:at].split(":", 1)[0] + ":***" + rest[at:]
    shown = re.sub(r"(password=)[^&#]*", r"\1***", scheme + sep + rest, flags=re.IGNORECASE)
    return scrub(shown)


def validate(url: str) -> dict[str, Any]:
    """The URL's connection parameters, or a StoreError that names the URL only redacted."""
    shown = redact(url)
    try:
        params = conninfo_to_dict(url)
    except Exception as exc:  # libpq's message may quote the URL (password and all)
        raise StoreError(f"LLMCAM_DB is not a valid PostgreSQL URL ({shown}): "
                         f"{_reason(exc)}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise StoreError(f"LLMCAM_DB is not a valid PostgreSQL URL ({shown}): the port "
                             "is not a number from 1 to 65535")
    if params.get("password"):
        _SECRETS.add(str(params["password"]))
    return params


class _Scrubbed(logging.Filter):
    """psycopg's own log records (the pool logs every failed connection) without passwords."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot be formatted: keep only where it came from
            message = f"{record.name}: a log record that could not be formatted"
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            if scrub(str(error)) != str(error):  # its traceback would quote the password
                record.msg = f"{record.msg} ({type(error).__name__})"
                record.exc_info, record.exc_text = None, None
        return True


for _name in ("psycopg", "psycopg.pool"):
    logging.getLogger(_name).addFilter(_Scrubbed())
