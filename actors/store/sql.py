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

Over 300 lines on purpose: every query of the store is here, so that each write's epoch
fence is read beside the write it guards.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from actors.errors import StoreError

SCHEMA_VERSION = 4
TABLES = ("sessions", "messages", "turns", "services", "files", "events", "streams")
# Columns versions 3 and 4 added to tables that existed before (a migration adds them).
ADDED_COLUMNS = {
    "sessions": [("owner", "TEXT"), ("sid", "TEXT"), ("last_active", "{real}"),
                 ("title", "TEXT"), ("prompt_tokens", "BIGINT NOT NULL DEFAULT 0"),
                 ("completion_tokens", "BIGINT NOT NULL DEFAULT 0"),
                 ("notifier_epoch", "BIGINT NOT NULL DEFAULT 0")],
    "streams": [("account", "TEXT")],
}
TITLE_CHARS = 80


class Fenced(RuntimeError):
    """A newer incarnation of this session's actor owns the journal now."""


@dataclass(frozen=True)
class NotifierEpoch:
    """The epoch of a session's notification child (its own fence, beside the session
    actor's): the child's writes (events, stream status, files) are refused once a newer
    incarnation of the child has claimed the session's streams."""

    value: int


Epoch = int | NotifierEpoch


@dataclass(frozen=True)
class StoredMessage:
    seq: int
    turn_id: str | None
    body: dict[str, Any]


@dataclass(frozen=True)
class SessionRow:
    created_at: float
    owner: str | None


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
    # serialises writers that count an account's rows (SQLite's BEGIN IMMEDIATE already does)
    ACCOUNT_LOCK = ""
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

    @abstractmethod
    def _columns(self, tx: Tx, table: str) -> set[str]:
        """The names of a table's columns (for the migration)."""

    @staticmethod
    def _blob(data: bytes) -> Any:
        return data

    # schema -------------------------------------------------------------------------------
    def _schema(self) -> list[str]:
        blob, real = self.BLOB, self.REAL
        # sessions.owner: the user who created it (None: nobody signed in); sid: its ID, kept
        # only for an owned session (its owner lists it; the ID alone no longer grants access)
        return [
            "CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, "
            f"created_at {real} NOT NULL, epoch BIGINT NOT NULL DEFAULT 0, owner TEXT, "
            f"sid TEXT, last_active {real}, title TEXT, "
            "prompt_tokens BIGINT NOT NULL DEFAULT 0, "
            "completion_tokens BIGINT NOT NULL DEFAULT 0, "
            "notifier_epoch BIGINT NOT NULL DEFAULT 0)",
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
            "sent INTEGER NOT NULL DEFAULT 0, account TEXT, PRIMARY KEY (key, noti_id))",
            # what one account (a user, or a client address) spent on one UTC day
            "CREATE TABLE IF NOT EXISTS usage (account TEXT NOT NULL, day TEXT NOT NULL, "
            "tokens BIGINT NOT NULL DEFAULT 0, turns BIGINT NOT NULL DEFAULT 0, "
            "PRIMARY KEY (account, day))",
            # the windows of the per-user rate limits (the `limits` library's storage)
            "CREATE TABLE IF NOT EXISTS rate_windows (name TEXT PRIMARY KEY, "
            f"expires_at {real} NOT NULL, hits BIGINT NOT NULL)",
        ]

    def _indexes(self) -> list[str]:
        return [
            "CREATE INDEX IF NOT EXISTS sessions_owner ON sessions (owner, last_active)",
            "CREATE INDEX IF NOT EXISTS sessions_last_active ON sessions (last_active)",
            "CREATE INDEX IF NOT EXISTS streams_account ON streams (account, status)",
            "CREATE INDEX IF NOT EXISTS streams_status ON streams (status, key)",
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
        for table, columns in ADDED_COLUMNS.items():  # a database of version 1 or 2
            have = self._columns(tx, table)
            for name, kind in columns:
                if name not in have:
                    tx.execute(f"ALTER TABLE {table} ADD COLUMN {name} "
                               f"{kind.format(real=self.REAL)}")
        # sessions of earlier versions belong to nobody; their last use is their creation
        tx.execute("UPDATE sessions SET last_active = created_at WHERE last_active IS NULL")
        for statement in self._indexes():
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
    def _fenced(self, key: str, epoch: Epoch) -> Iterator[Tx]:
        """A write transaction that is refused unless `epoch` is still the session's (or,
        for a NotifierEpoch, still its notification child's)."""
        column, value = (("notifier_epoch", epoch.value) if isinstance(epoch, NotifierEpoch)
                         else ("epoch", epoch))
        with self._transaction() as tx:
            row = tx.execute(f"SELECT {column} FROM sessions WHERE key=?{self.LOCK}",
                             (key,)).fetchone()
            if row is None or int(row[0]) != value:
                raise Fenced(key)
            yield tx

    # sessions -----------------------------------------------------------------------------
    def create_session(self, key: str, owner: str | None = None,
                       session_id: str | None = None) -> None:
        """A new session row; an owned one keeps its ID, so that its owner can list it."""
        now = time.time()
        with self._transaction() as tx:
            tx.execute("INSERT INTO sessions (key, created_at, owner, sid, last_active) "
                       "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
                       (key, now, owner, session_id if owner else None, now))

    def session_created_at(self, key: str) -> float | None:
        rows = self._read("SELECT created_at FROM sessions WHERE key=?", (key,))
        return float(rows[0][0]) if rows else None

    def session_row(self, key: str) -> SessionRow | None:
        rows = self._read("SELECT created_at, owner FROM sessions WHERE key=?", (key,))
        return SessionRow(float(rows[0][0]), rows[0][1]) if rows else None

    def sessions_of(self, owner: str, limit: int = 200) -> list[dict[str, Any]]:
        """An owner's sessions, the most recently active first."""
        rows = self._read(
            "SELECT s.sid, s.created_at, s.last_active, s.title, "
            "(SELECT COUNT(*) FROM messages m WHERE m.key = s.key) "
            "FROM sessions s WHERE s.owner=? AND s.sid IS NOT NULL "
            "ORDER BY s.last_active DESC LIMIT ?", (owner, limit))
        return [{"session_id": sid, "created_at": float(created),
                 "last_active": float(active if active is not None else created),
                 "title": title or "", "message_count": int(count)}
                for sid, created, active, title, count in rows]

    def session_usage(self, key: str) -> dict[str, int]:
        rows = self._read("SELECT prompt_tokens, completion_tokens FROM sessions WHERE key=?",
                          (key,))
        prompt, completion = rows[0] if rows else (0, 0)
        return {"prompt_tokens": int(prompt), "completion_tokens": int(completion)}

    def expired_sessions(self, before: float, limit: int = 500) -> list[str]:
        """Keys of sessions unused since `before` (the retention sweep's one indexed read)."""
        rows = self._read("SELECT key FROM sessions WHERE last_active < ? LIMIT ?",
                          (before, limit))
        return [key for (key,) in rows]

    def epoch(self, key: str) -> int | None:
        """The session's current epoch, None when the session is gone."""
        rows = self._read("SELECT epoch FROM sessions WHERE key=?", (key,))
        return int(rows[0][0]) if rows else None

    def count_sessions(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM sessions", ())[0][0])

    def claim(self, key: str) -> int:
        """Take the next epoch for a new incarnation of the session's actor (a use too)."""
        with self._transaction() as tx:
            tx.execute("UPDATE sessions SET epoch = epoch + 1, last_active = ? WHERE key=?",
                       (time.time(), key))
            row = tx.execute("SELECT epoch FROM sessions WHERE key=?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return int(row[0])

    def claim_notifier(self, key: str) -> NotifierEpoch:
        """Take the next epoch for a new incarnation of the session's notification child (not
        a use of the session: streams do not keep it from expiring)."""
        with self._transaction() as tx:
            tx.execute("UPDATE sessions SET notifier_epoch = notifier_epoch + 1 WHERE key=?",
                       (key,))
            row = tx.execute("SELECT notifier_epoch FROM sessions WHERE key=?",
                             (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return NotifierEpoch(int(row[0]))

    def sessions_with_streams(self, limit: int = 100_000) -> list[str]:
        """Keys of the sessions that have a running notification stream."""
        rows = self._read("SELECT DISTINCT key FROM streams WHERE status='running' LIMIT ?",
                          (limit,))
        return [key for (key,) in rows]

    def delete_session(self, key: str) -> None:
        with self._transaction() as tx:
            for table in TABLES:
                tx.execute(f"DELETE FROM {table} WHERE key=?", (key,))

    # messages -----------------------------------------------------------------------------
    def messages(self, key: str) -> list[StoredMessage]:
        rows = self._read("SELECT seq, turn_id, body FROM messages WHERE key=? ORDER BY seq",
                          (key,))
        return [StoredMessage(int(seq), turn, json.loads(body)) for seq, turn, body in rows]

    def begin_turn(self, key: str, epoch: Epoch, turn_id: str, user: dict[str, Any],
                   account: str | None = None) -> bool:
        """Record a turn's user message once; False when this turn was recorded before. The
        turn counts as the account's (a user or a client address) and as the session's use;
        the first message is the session's title."""
        now = time.time()
        with self._fenced(key, epoch) as tx:
            cur = tx.execute("INSERT INTO turns (key, turn_id) VALUES (?, ?) "
                             "ON CONFLICT (key, turn_id) DO NOTHING", (key, turn_id))
            if cur.rowcount == 0:
                return False
            self._append(tx, key, turn_id, [user])
            title = str(user.get("content") or "")[:TITLE_CHARS]
            tx.execute("UPDATE sessions SET last_active=?, title=COALESCE(title, ?) "
                       "WHERE key=?", (now, title, key))
            if account:
                tx.execute("INSERT INTO usage (account, day, turns) VALUES (?, ?, 1) "
                           "ON CONFLICT (account, day) DO UPDATE SET turns = usage.turns + 1",
                           (account, utc_day(now)))
            return True

    def append(self, key: str, epoch: Epoch, turn_id: str | None,
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

    def finish_turn(self, key: str, epoch: Epoch, turn_id: str) -> None:
        with self._fenced(key, epoch) as tx:
            tx.execute("UPDATE turns SET done=1 WHERE key=? AND turn_id=?", (key, turn_id))

    def turn_done(self, key: str, turn_id: str) -> bool:
        rows = self._read("SELECT done FROM turns WHERE key=? AND turn_id=?", (key, turn_id))
        return bool(rows and rows[0][0])

    # costs ----------------------------------------------------------------------------------
    def add_tokens(self, key: str, account: str | None, prompt: int, completion: int) -> None:
        """Token counts of one model call, for the session and its account's day (not fenced:
        a call that was made is paid for, whichever incarnation made it)."""
        with self._transaction() as tx:
            tx.execute("UPDATE sessions SET prompt_tokens = prompt_tokens + ?, "
                       "completion_tokens = completion_tokens + ? WHERE key=?",
                       (prompt, completion, key))
            if account:
                tx.execute("INSERT INTO usage (account, day, tokens) VALUES (?, ?, ?) "
                           "ON CONFLICT (account, day) DO UPDATE SET "
                           "tokens = usage.tokens + excluded.tokens",
                           (account, utc_day(time.time()), prompt + completion))

    def usage_today(self, account: str) -> dict[str, int]:
        rows = self._read("SELECT tokens, turns FROM usage WHERE account=? AND day=?",
                          (account, utc_day(time.time())))
        tokens, turns = rows[0] if rows else (0, 0)
        return {"tokens_today": int(tokens), "turns_today": int(turns)}

    # rate windows (the storage of the `limits` library, gateway/quota.py) ------------------
    def rate_incr(self, name: str, expiry: float, amount: int = 1) -> int:
        """Add `amount` to a window, starting it anew when it has expired; the new count."""
        now = time.time()
        with self._transaction() as tx:
            row = tx.execute(
                "INSERT INTO rate_windows (name, expires_at, hits) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET "
                "hits = CASE WHEN rate_windows.expires_at <= ? THEN excluded.hits "
                "ELSE rate_windows.hits + excluded.hits END, "
                "expires_at = CASE WHEN rate_windows.expires_at <= ? "
                "THEN excluded.expires_at ELSE rate_windows.expires_at END "
                "RETURNING hits", (name, now + expiry, amount, now, now)).fetchone()
        return int(row[0])

    def rate_get(self, name: str) -> tuple[int, float]:
        """(hits, expires_at) of a live window; (0, now) when there is none."""
        now = time.time()
        rows = self._read("SELECT hits, expires_at FROM rate_windows "
                          "WHERE name=? AND expires_at > ?", (name, now))
        return (int(rows[0][0]), float(rows[0][1])) if rows else (0, now)

    def rate_clear(self, name: str | None = None) -> int:
        """Forget one window, or (None) every expired one."""
        with self._transaction() as tx:
            if name is None:
                return tx.execute("DELETE FROM rate_windows WHERE expires_at <= ?",
                                  (time.time(),)).rowcount
            return tx.execute("DELETE FROM rate_windows WHERE name=?", (name,)).rowcount

    # services (tools a session added) -----------------------------------------------------
    def services(self, key: str) -> dict[str, dict[str, Any]]:
        rows = self._read("SELECT name, spec FROM services WHERE key=? ORDER BY added_at",
                          (key,))
        return {name: json.loads(spec) for name, spec in rows}

    def put_service(self, key: str, epoch: Epoch, name: str, spec: dict[str, Any]) -> None:
        with self._fenced(key, epoch) as tx:
            tx.execute("INSERT INTO services (key, name, spec, added_at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (key, name) DO UPDATE SET spec=excluded.spec, "
                       "added_at=excluded.added_at", (key, name, json.dumps(spec), time.time()))

    def remove_service(self, key: str, epoch: Epoch, name: str) -> bool:
        with self._fenced(key, epoch) as tx:
            return tx.execute("DELETE FROM services WHERE key=? AND name=?",
                              (key, name)).rowcount > 0

    # files --------------------------------------------------------------------------------
    def put_file(self, key: str, epoch: Epoch, name: str, kind: str, data: bytes) -> None:
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
    def add_event(self, key: str, epoch: Epoch, noti_id: str, message: str,
                  keep: int | None = None) -> tuple[int, float]:
        """Number and store one event; with `keep`, only the newest `keep` events stay."""
        at = time.time()
        with self._fenced(key, epoch) as tx:
            (last,) = tx.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE key=?",
                                 (key,)).fetchone()
            seq = int(last) + 1
            tx.execute("INSERT INTO events (key, seq, noti_id, message, at) "
                       "VALUES (?, ?, ?, ?, ?)", (key, seq, noti_id, message, at))
            if keep is not None and seq > keep:
                tx.execute("DELETE FROM events WHERE key=? AND seq <= ?", (key, seq - keep))
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

    def put_stream(self, key: str, epoch: Epoch, noti_id: str, spec: dict[str, Any],
                   status: str, account: str | None = None, limit: int | None = None) -> bool:
        """Record a stream; with `limit`, only while the account runs fewer than `limit`
        streams (False: refused, nothing written)."""
        with self._fenced(key, epoch) as tx:
            if account and limit is not None:
                if self.ACCOUNT_LOCK:
                    tx.execute(self.ACCOUNT_LOCK, (account,))
                (running,) = tx.execute("SELECT COUNT(*) FROM streams WHERE account=? AND "
                                        "status='running'", (account,)).fetchone()
                if int(running) >= limit:
                    return False
            tx.execute("INSERT INTO streams (key, noti_id, spec, status, started_at, sent, "
                       "account) VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT (key, noti_id) "
                       "DO UPDATE SET spec=excluded.spec, status=excluded.status, "
                       "started_at=excluded.started_at, sent=0, account=excluded.account",
                       (key, noti_id, json.dumps(spec), status, time.time(), account))
        return True

    def running_streams(self, account: str) -> int:
        rows = self._read("SELECT COUNT(*) FROM streams WHERE account=? AND status='running'",
                          (account,))
        return int(rows[0][0])

    def set_stream_status(self, key: str, epoch: Epoch, noti_id: str, status: str) -> None:
        with self._fenced(key, epoch) as tx:
            tx.execute("UPDATE streams SET status=? WHERE key=? AND noti_id=?",
                       (status, key, noti_id))

    def streams(self, key: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT noti_id, spec, status, started_at, sent FROM streams "
                          "WHERE key=? ORDER BY started_at", (key,))
        return [{"noti_id": n, "spec": json.loads(s), "status": st, "started_at": float(at),
                 "sent": int(sent)} for n, s, st, at, sent in rows]


def utc_day(at: float) -> str:
    """The UTC day a moment falls on, as budgets count (YYYY-MM-DD)."""
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def _refuse_newer(found: int | None) -> None:
    if found is not None and found > SCHEMA_VERSION:
        raise StoreError(
            f"the database's schema is version {found}, newer than this server's "
            f"({SCHEMA_VERSION}): upgrade llmcam, or point LLMCAM_DB at another database")
