"""The store's SQL, written once for both databases (the facade is actors/store.py).

The durable truth behind every session: messages, added tools, files, events and streams.

Each session actor is the live copy; the store is what a rebuilt (or reactivated) actor reads
back. Writes are fenced by an *epoch*: every new incarnation of a session's actor takes the next
epoch, and a write from an older incarnation (a killed actor not yet gone, an actor on a node
that was cut off, one in another Ray that shares the database) is refused, so a turn that a
retry took over is never journaled twice. The fence is a conditional write in the same
transaction as the data: both implementations lock the session's row first.

Two implementations share this SQL: SQLite (the embedded default: one file on the gateway's
node) and PostgreSQL (what a cluster uses: every node reaches it). `open_store` picks one.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

SCHEMA_VERSION = 2
TABLES = ("sessions", "messages", "turns", "services", "files", "events", "streams")


class Fenced(RuntimeError):
    """A newer incarnation of this session's actor owns the journal now."""


class StoreError(RuntimeError):
    """The database is unreachable or not one this server can use; the text says why."""


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    turn_id: str | None
    body: dict[str, Any]


@dataclass(frozen=True)
class FileInfo:
    name: str
    kind: str
    size: int
    created_at: float


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """What a transaction runs statements on: sqlite3's and psycopg's connections alike."""

    def execute(self, sql: str, args: tuple[Any, ...] = ()) -> Cursor: ...


class Store(ABC):
    """Every statement is written once, in SQL both databases speak (`?` placeholders, upserts
    with ON CONFLICT); a subclass supplies connections, transactions and the row lock."""

    LOCK = ""  # appended to the fence's SELECT: " FOR UPDATE" where rows can be locked
    BLOB = "BLOB"
    REAL = "REAL"

    # supplied by each database ------------------------------------------------------------
    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Tx]:
        """A write transaction (serialised with other writers of the same rows)."""

    @abstractmethod
    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """Rows of one query, outside any write transaction."""

    @abstractmethod
    def close(self) -> None: ...

    @staticmethod
    def _blob(data: bytes) -> Any:
        return data

    # schema -------------------------------------------------------------------------------
    def _schema(self) -> list[str]:
        blob, real = self.BLOB, self.REAL
        return [
            "CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, "
            f"created_at {real} NOT NULL, epoch BIGINT NOT NULL DEFAULT 0)",
            "CREATE TABLE IF NOT EXISTS messages (key TEXT NOT NULL, seq BIGINT NOT NULL, "
            "turn_id TEXT, body TEXT NOT NULL, PRIMARY KEY (key, seq))",
            "CREATE TABLE IF NOT EXISTS turns (key TEXT NOT NULL, turn_id TEXT NOT NULL, "
            "done INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (key, turn_id))",
            "CREATE TABLE IF NOT EXISTS services (key TEXT NOT NULL, name TEXT NOT NULL, "
            f"spec TEXT NOT NULL, added_at {real} NOT NULL, PRIMARY KEY (key, name))",
            "CREATE TABLE IF NOT EXISTS files (key TEXT NOT NULL, name TEXT NOT NULL, "
            f"kind TEXT NOT NULL, data {blob} NOT NULL, created_at {real} NOT NULL, "
            "PRIMARY KEY (key, name))",
            "CREATE TABLE IF NOT EXISTS events (key TEXT NOT NULL, seq BIGINT NOT NULL, "
            f"noti_id TEXT NOT NULL, message TEXT NOT NULL, at {real} NOT NULL, "
            "PRIMARY KEY (key, seq))",
            "CREATE TABLE IF NOT EXISTS streams (key TEXT NOT NULL, noti_id TEXT NOT NULL, "
            f"spec TEXT NOT NULL, status TEXT NOT NULL, started_at {real} NOT NULL, "
            "sent INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (key, noti_id))",
        ]

    def _migrate(self, tx: Tx) -> None:
        """Bring the schema to SCHEMA_VERSION; refuse a database a newer server wrote.

        Version 1 (the first release) had the tables but no version table."""
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = tx.execute("SELECT MAX(version) FROM schema_version").fetchone()
        found = row[0] if row and row[0] is not None else None
        _refuse_newer(found)
        for statement in self._schema():
            tx.execute(statement)
        if found != SCHEMA_VERSION:
            tx.execute("DELETE FROM schema_version")
            tx.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    def _check_version(self) -> None:
        """What a session actor does instead of migrating: the gateway that started it has."""
        try:
            found = self._read("SELECT MAX(version) FROM schema_version", ())[0][0]
        except StoreError:
            raise
        except Exception as exc:  # no version table: no gateway has prepared this database
            raise StoreError("the database has no llmcam schema yet (a gateway creates it)"
                             ) from exc
        _refuse_newer(found)

    def schema_version(self) -> int:
        rows = self._read("SELECT MAX(version) FROM schema_version", ())
        return int(rows[0][0])

    # transactions -------------------------------------------------------------------------
    @contextmanager
    def _fenced(self, key: str, epoch: int) -> Iterator[Tx]:
        """A write transaction that is refused unless `epoch` is still the session's."""
        with self._transaction() as tx:
            row = tx.execute(f"SELECT epoch FROM sessions WHERE key=?{self.LOCK}",
                             (key,)).fetchone()
            if row is None or int(row[0]) != epoch:
                raise Fenced(key)
            yield tx

    # sessions -----------------------------------------------------------------------------
    def create_session(self, key: str) -> None:
        with self._transaction() as tx:
            tx.execute("INSERT INTO sessions (key, created_at) VALUES (?, ?) "
                       "ON CONFLICT (key) DO NOTHING", (key, time.time()))

    def session_created_at(self, key: str) -> float | None:
        rows = self._read("SELECT created_at FROM sessions WHERE key=?", (key,))
        return float(rows[0][0]) if rows else None

    def epoch(self, key: str) -> int | None:
        """The session's current epoch, None when the session is gone."""
        rows = self._read("SELECT epoch FROM sessions WHERE key=?", (key,))
        return int(rows[0][0]) if rows else None

    def count_sessions(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM sessions", ())[0][0])

    def claim(self, key: str) -> int:
        """Take the next epoch for a new incarnation of the session's actor."""
        with self._transaction() as tx:
            tx.execute("UPDATE sessions SET epoch = epoch + 1 WHERE key=?", (key,))
            row = tx.execute("SELECT epoch FROM sessions WHERE key=?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return int(row[0])

    def delete_session(self, key: str) -> None:
        with self._transaction() as tx:
            for table in TABLES:
                tx.execute(f"DELETE FROM {table} WHERE key=?", (key,))

    # messages -----------------------------------------------------------------------------
    def messages(self, key: str) -> list[StoredMessage]:
        rows = self._read("SELECT seq, turn_id, body FROM messages WHERE key=? ORDER BY seq",
                          (key,))
        return [StoredMessage(int(seq), turn, json.loads(body)) for seq, turn, body in rows]

    def begin_turn(self, key: str, epoch: int, turn_id: str, user: dict[str, Any]) -> bool:
        """Record a turn's user message once; False when this turn was recorded before."""
        with self._fenced(key, epoch) as tx:
            cur = tx.execute("INSERT INTO turns (key, turn_id) VALUES (?, ?) "
                             "ON CONFLICT (key, turn_id) DO NOTHING", (key, turn_id))
            if cur.rowcount == 0:
                return False
            self._append(tx, key, turn_id, [user])
            return True

    def append(self, key: str, epoch: int, turn_id: str | None,
               bodies: list[dict[str, Any]]) -> None:
        with self._fenced(key, epoch) as tx:
            self._append(tx, key, turn_id, bodies)

    @staticmethod
    def _append(tx: Tx, key: str, turn_id: str | None, bodies: list[dict[str, Any]]) -> None:
        (last,) = tx.execute("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE key=?",
                             (key,)).fetchone()
        for i, body in enumerate(bodies):
            tx.execute("INSERT INTO messages (key, seq, turn_id, body) VALUES (?, ?, ?, ?)",
                       (key, int(last) + i + 1, turn_id, json.dumps(body)))

    def finish_turn(self, key: str, epoch: int, turn_id: str) -> None:
        with self._fenced(key, epoch) as tx:
            tx.execute("UPDATE turns SET done=1 WHERE key=? AND turn_id=?", (key, turn_id))

    def turn_done(self, key: str, turn_id: str) -> bool:
        rows = self._read("SELECT done FROM turns WHERE key=? AND turn_id=?", (key, turn_id))
        return bool(rows and rows[0][0])

    # services (tools a session added) -----------------------------------------------------
    def services(self, key: str) -> dict[str, dict[str, Any]]:
        rows = self._read("SELECT name, spec FROM services WHERE key=? ORDER BY added_at",
                          (key,))
        return {name: json.loads(spec) for name, spec in rows}

    def put_service(self, key: str, epoch: int, name: str, spec: dict[str, Any]) -> None:
        with self._fenced(key, epoch) as tx:
            tx.execute("INSERT INTO services (key, name, spec, added_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (key, name) DO UPDATE SET spec=excluded.spec, "
                       "added_at=excluded.added_at", (key, name, json.dumps(spec), time.time()))

    def remove_service(self, key: str, epoch: int, name: str) -> bool:
        with self._fenced(key, epoch) as tx:
            return tx.execute("DELETE FROM services WHERE key=? AND name=?",
                              (key, name)).rowcount > 0

    # files --------------------------------------------------------------------------------
    def put_file(self, key: str, epoch: int, name: str, kind: str, data: bytes) -> None:
        with self._fenced(key, epoch) as tx:
            tx.execute("INSERT INTO files (key, name, kind, data, created_at) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key, name) DO UPDATE SET "
                       "kind=excluded.kind, data=excluded.data, created_at=excluded.created_at",
                       (key, name, kind, self._blob(data), time.time()))

    def files(self, key: str) -> list[FileInfo]:
        rows = self._read("SELECT name, kind, length(data), created_at FROM files WHERE key=? "
                          "ORDER BY created_at, name", (key,))
        return [FileInfo(name, kind, int(size), float(at)) for name, kind, size, at in rows]

    def file(self, key: str, name: str) -> tuple[str, bytes] | None:
        rows = self._read("SELECT kind, data FROM files WHERE key=? AND name=?", (key, name))
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    # notification events and streams ------------------------------------------------------
    def add_event(self, key: str, epoch: int, noti_id: str, message: str) -> tuple[int, float]:
        at = time.time()
        with self._fenced(key, epoch) as tx:
            (last,) = tx.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE key=?",
                                 (key,)).fetchone()
            seq = int(last) + 1
            tx.execute("INSERT INTO events (key, seq, noti_id, message, at) "
                       "VALUES (?, ?, ?, ?, ?)", (key, seq, noti_id, message, at))
            tx.execute("UPDATE streams SET sent = sent + 1 WHERE key=? AND noti_id=?",
                       (key, noti_id))
        return seq, at

    def events_after(self, key: str, after: int,
                     limit: int | None = None) -> list[tuple[int, str, str, float]]:
        """Stored events after `after`, oldest first; with a limit, only the newest `limit`."""
        if limit is None:
            rows = self._read("SELECT seq, noti_id, message, at FROM events "
                              "WHERE key=? AND seq>? ORDER BY seq", (key, after))
        else:
            rows = self._read("SELECT seq, noti_id, message, at FROM events "
                              "WHERE key=? AND seq>? ORDER BY seq DESC LIMIT ?",
                              (key, after, limit))[::-1]
        return [(int(seq), n, m, float(at)) for seq, n, m, at in rows]

    def put_stream(self, key: str, epoch: int, noti_id: str, spec: dict[str, Any],
                   status: str) -> None:
        with self._fenced(key, epoch) as tx:
            tx.execute("INSERT INTO streams (key, noti_id, spec, status, started_at, sent) "
                       "VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT (key, noti_id) DO UPDATE SET "
                       "spec=excluded.spec, status=excluded.status, "
                       "started_at=excluded.started_at, sent=0",
                       (key, noti_id, json.dumps(spec), status, time.time()))

    def set_stream_status(self, key: str, epoch: int, noti_id: str, status: str) -> None:
        with self._fenced(key, epoch) as tx:
            tx.execute("UPDATE streams SET status=? WHERE key=? AND noti_id=?",
                       (status, key, noti_id))

    def streams(self, key: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT noti_id, spec, status, started_at, sent FROM streams "
                          "WHERE key=? ORDER BY started_at", (key,))
        return [{"noti_id": n, "spec": json.loads(s), "status": st, "started_at": float(at),
                 "sent": int(sent)} for n, s, st, at, sent in rows]


def _refuse_newer(found: int | None) -> None:
    if found is not None and found > SCHEMA_VERSION:
        raise StoreError(
            f"the database's schema is version {found}, newer than this server's "
            f"({SCHEMA_VERSION}): upgrade llmcam, or point LLMCAM_DB at another database")
