"""The durable truth behind every session: messages, added tools, files, events and streams.

Each session actor is the live copy; the store is what a rebuilt actor reads back. Writes are
fenced by an *epoch*: every new incarnation of a session's actor takes the next epoch, and a write
from an older incarnation (one that `ray.kill` has not finished off yet) is refused, so a turn
that a retry took over is never journaled twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, created_at REAL NOT NULL, epoch INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS messages (
    key TEXT NOT NULL, seq INTEGER NOT NULL, turn_id TEXT, body TEXT NOT NULL,
    PRIMARY KEY (key, seq));
CREATE TABLE IF NOT EXISTS turns (
    key TEXT NOT NULL, turn_id TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key, turn_id));
CREATE TABLE IF NOT EXISTS services (
    key TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL, added_at REAL NOT NULL,
    PRIMARY KEY (key, name));
CREATE TABLE IF NOT EXISTS files (
    key TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, data BLOB NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (key, name));
CREATE TABLE IF NOT EXISTS events (
    key TEXT NOT NULL, seq INTEGER NOT NULL, noti_id TEXT NOT NULL, message TEXT NOT NULL,
    at REAL NOT NULL, PRIMARY KEY (key, seq));
CREATE TABLE IF NOT EXISTS streams (
    key TEXT NOT NULL, noti_id TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
    started_at REAL NOT NULL, sent INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (key, noti_id));
"""


class Fenced(RuntimeError):
    """A newer incarnation of this session's actor owns the journal now."""


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


def open_store(url: str) -> SQLiteStore:
    """The store named by LLMCAM_DB (an SQLite path; PostgreSQL would slot in here)."""
    if url.startswith(("postgresql://", "postgres://")):
        raise NotImplementedError(
            "LLMCAM_DB: PostgreSQL is not supported in this build; use an SQLite path"
        )
    return SQLiteStore(Path(url.removeprefix("sqlite:///")))


class SQLiteStore:
    """SQLite in WAL mode: many session actors (processes) write to it at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()  # one connection, used from the loop and worker threads
        self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False,
                                     isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self._conn.execute(statement)

    @contextmanager
    def _tx(self, key: str | None = None, epoch: int | None = None) -> Iterator[sqlite3.Connection]:
        """A write transaction; with an epoch, refused unless it is still the session's epoch."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if epoch is not None:
                    row = self._conn.execute(
                        "SELECT epoch FROM sessions WHERE key=?", (key,)).fetchone()
                    if row is None or row[0] != epoch:
                        raise Fenced(key)
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # sessions -----------------------------------------------------------------------------
    def create_session(self, key: str) -> None:
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO sessions (key, created_at) VALUES (?, ?)",
                      (key, time.time()))

    def session_created_at(self, key: str) -> float | None:
        rows = self._read("SELECT created_at FROM sessions WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def claim(self, key: str) -> int:
        """Take the next epoch for a new incarnation of the session's actor."""
        with self._tx() as c:
            c.execute("UPDATE sessions SET epoch = epoch + 1 WHERE key=?", (key,))
            row = c.execute("SELECT epoch FROM sessions WHERE key=?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return int(row[0])

    def delete_session(self, key: str) -> None:
        with self._tx() as c:
            for table in ("sessions", "messages", "turns", "services", "files", "events",
                          "streams"):
                c.execute(f"DELETE FROM {table} WHERE key=?", (key,))

    # messages -----------------------------------------------------------------------------
    def messages(self, key: str) -> list[StoredMessage]:
        rows = self._read("SELECT seq, turn_id, body FROM messages WHERE key=? ORDER BY seq",
                          (key,))
        return [StoredMessage(seq, turn, json.loads(body)) for seq, turn, body in rows]

    def begin_turn(self, key: str, epoch: int, turn_id: str, user: dict[str, Any]) -> bool:
        """Record a turn's user message once; False when this turn was recorded before."""
        with self._tx(key, epoch) as c:
            cur = c.execute("INSERT OR IGNORE INTO turns (key, turn_id) VALUES (?, ?)",
                            (key, turn_id))
            if cur.rowcount == 0:
                return False
            self._append(c, key, turn_id, [user])
            return True

    def append(self, key: str, epoch: int, turn_id: str | None,
               bodies: list[dict[str, Any]]) -> None:
        with self._tx(key, epoch) as c:
            self._append(c, key, turn_id, bodies)

    @staticmethod
    def _append(c: sqlite3.Connection, key: str, turn_id: str | None,
                bodies: list[dict[str, Any]]) -> None:
        (last,) = c.execute("SELECT COALESCE(MAX(seq), 0) FROM messages WHERE key=?",
                            (key,)).fetchone()
        c.executemany(
            "INSERT INTO messages (key, seq, turn_id, body) VALUES (?, ?, ?, ?)",
            [(key, last + i + 1, turn_id, json.dumps(b)) for i, b in enumerate(bodies)])

    def finish_turn(self, key: str, epoch: int, turn_id: str) -> None:
        with self._tx(key, epoch) as c:
            c.execute("UPDATE turns SET done=1 WHERE key=? AND turn_id=?", (key, turn_id))

    def turn_done(self, key: str, turn_id: str) -> bool:
        rows = self._read("SELECT done FROM turns WHERE key=? AND turn_id=?", (key, turn_id))
        return bool(rows and rows[0][0])

    # services (tools a session added) -----------------------------------------------------
    def services(self, key: str) -> dict[str, dict[str, Any]]:
        rows = self._read("SELECT name, spec FROM services WHERE key=? ORDER BY added_at",
                          (key,))
        return {name: json.loads(spec) for name, spec in rows}

    def put_service(self, key: str, epoch: int, name: str, spec: dict[str, Any]) -> None:
        with self._tx(key, epoch) as c:
            c.execute("INSERT OR REPLACE INTO services VALUES (?, ?, ?, ?)",
                      (key, name, json.dumps(spec), time.time()))

    def remove_service(self, key: str, epoch: int, name: str) -> bool:
        with self._tx(key, epoch) as c:
            return c.execute("DELETE FROM services WHERE key=? AND name=?",
                             (key, name)).rowcount > 0

    # files --------------------------------------------------------------------------------
    def put_file(self, key: str, epoch: int, name: str, kind: str, data: bytes) -> None:
        with self._tx(key, epoch) as c:
            c.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)",
                      (key, name, kind, data, time.time()))

    def files(self, key: str) -> list[FileInfo]:
        rows = self._read("SELECT name, kind, length(data), created_at FROM files WHERE key=? "
                          "ORDER BY created_at, name", (key,))
        return [FileInfo(*row) for row in rows]

    def file(self, key: str, name: str) -> tuple[str, bytes] | None:
        rows = self._read("SELECT kind, data FROM files WHERE key=? AND name=?", (key, name))
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    # notification events and streams ------------------------------------------------------
    def add_event(self, key: str, epoch: int, noti_id: str, message: str) -> tuple[int, float]:
        at = time.time()
        with self._tx(key, epoch) as c:
            (last,) = c.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE key=?",
                                (key,)).fetchone()
            c.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                      (key, last + 1, noti_id, message, at))
            c.execute("UPDATE streams SET sent = sent + 1 WHERE key=? AND noti_id=?",
                      (key, noti_id))
        return last + 1, at

    def events_after(self, key: str, after: int) -> list[tuple[int, str, str, float]]:
        return self._read("SELECT seq, noti_id, message, at FROM events WHERE key=? AND seq>? "
                          "ORDER BY seq", (key, after))  # type: ignore[return-value]

    def put_stream(self, key: str, epoch: int, noti_id: str, spec: dict[str, Any],
                   status: str) -> None:
        with self._tx(key, epoch) as c:
            c.execute("INSERT OR REPLACE INTO streams (key, noti_id, spec, status, started_at, "
                      "sent) VALUES (?, ?, ?, ?, ?, 0)",
                      (key, noti_id, json.dumps(spec), status, time.time()))

    def set_stream_status(self, key: str, epoch: int, noti_id: str, status: str) -> None:
        with self._tx(key, epoch) as c:
            c.execute("UPDATE streams SET status=? WHERE key=? AND noti_id=?",
                      (status, key, noti_id))

    def streams(self, key: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT noti_id, spec, status, started_at, sent FROM streams "
                          "WHERE key=? ORDER BY started_at", (key,))
        return [{"noti_id": n, "spec": json.loads(s), "status": st, "started_at": at, "sent": sent}
                for n, s, st, at, sent in rows]
