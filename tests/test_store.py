"""The store, one suite for both implementations (SQLite and a real PostgreSQL server): the
epoch fence, exactly-once turns, numbering, every kind of record, schema versions, and what a
caller sees when the database is unreachable."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.store import SCHEMA_VERSION, Fenced, Store, StoreError, open_store
from tests.helpers import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return fresh_database(request.getfixturevalue("postgres"))


@pytest.fixture()
def store(url: str) -> Iterator[Store]:
    s = open_store(url)
    yield s
    s.close()


def test_an_older_epoch_cannot_write(store: Store) -> None:
    store.create_session("k")
    old = store.claim("k")
    new = store.claim("k")
    assert new == old + 1
    with pytest.raises(Fenced):
        store.append("k", old, None, [{"role": "user", "content": "from the old actor"}])
    store.append("k", new, None, [{"role": "user", "content": "from the new one"}])
    assert [m.body["content"] for m in store.messages("k")] == ["from the new one"]
    with pytest.raises(Fenced):
        store.put_file("k", old, "a.jpg", "capture", b"x")
    with pytest.raises(Fenced):
        store.add_event("k", old, "n", "m")
    assert store.files("k") == [] and store.events_after("k", 0) == []


def test_a_deleted_session_takes_no_writes(store: Store) -> None:
    store.create_session("k")
    epoch = store.claim("k")
    store.delete_session("k")
    assert store.session_created_at("k") is None and store.epoch("k") is None
    with pytest.raises(Fenced):
        store.append("k", epoch, None, [{"role": "user", "content": "late"}])


def test_a_turn_is_recorded_once(store: Store) -> None:
    store.create_session("k")
    epoch = store.claim("k")
    user = {"role": "user", "content": "hi"}
    assert store.begin_turn("k", epoch, "t1", user) is True
    epoch = store.claim("k")  # a retry in the next incarnation
    assert store.begin_turn("k", epoch, "t1", user) is False
    assert not store.turn_done("k", "t1")
    store.append("k", epoch, "t1", [{"role": "assistant", "content": "hello"}])
    store.finish_turn("k", epoch, "t1")
    assert store.turn_done("k", "t1")
    stored = store.messages("k")
    assert [(m.seq, m.turn_id, m.body["role"]) for m in stored] == [
        (1, "t1", "user"), (2, "t1", "assistant")]


def test_records_round_trip(store: Store) -> None:
    store.create_session("k")
    store.create_session("other")
    epoch = store.claim("k")
    store.put_service("k", epoch, "maths", {"kind": "functions", "names": ["a"]})
    store.put_service("k", epoch, "maths", {"kind": "functions", "names": ["a", "b"]})
    assert store.services("k") == {"maths": {"kind": "functions", "names": ["a", "b"]}}
    assert store.remove_service("k", epoch, "maths") and not store.services("k")
    data = bytes(range(256)) * 10
    store.put_file("k", epoch, "cap_1.jpg", "capture", data)
    assert store.file("k", "cap_1.jpg") == ("capture", data)
    assert store.file("other", "cap_1.jpg") is None
    [info] = store.files("k")
    assert (info.name, info.kind, info.size) == ("cap_1.jpg", "capture", len(data))
    store.put_stream("k", epoch, "s1", {"task": "watch"}, "running")
    assert [store.add_event("k", epoch, "s1", f"m{i}")[0] for i in range(5)] == [1, 2, 3, 4, 5]
    assert [e[0] for e in store.events_after("k", 2)] == [3, 4, 5]
    assert [e[0] for e in store.events_after("k", 0, limit=2)] == [4, 5]  # the newest two
    store.set_stream_status("k", epoch, "s1", "stopped")
    [row] = store.streams("k")
    assert (row["status"], row["sent"], row["spec"]) == ("stopped", 5, {"task": "watch"})
    assert store.count_sessions() == 2
    store.delete_session("k")
    assert store.files("k") == [] and store.streams("k") == [] and store.messages("k") == []
    assert store.count_sessions() == 1


def test_concurrent_writers_of_one_session_get_distinct_numbers(url: str) -> None:
    """Two handles (as two processes would hold) writing the same session at once."""
    stores = [open_store(url) for _ in range(2)]
    try:
        stores[0].create_session("k")
        epoch = stores[0].claim("k")

        def write(s: Store, who: int) -> None:
            for i in range(25):
                s.append("k", epoch, None, [{"role": "user", "content": f"{who}-{i}"}])

        threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seqs = [m.seq for m in stores[1].messages("k")]
        assert seqs == list(range(1, 51))
    finally:
        for s in stores:
            s.close()


def test_a_newer_schema_is_refused_clearly(url: str) -> None:
    open_store(url).close()
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    else:
        with sqlite3.connect(url) as conn:
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this server"):
        open_store(url)


def test_a_first_release_database_is_migrated(tmp_path: Path) -> None:
    """The first release wrote the same tables without a version table."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sessions (key TEXT PRIMARY KEY, created_at REAL NOT NULL, "
                     "epoch INTEGER NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO sessions VALUES ('k', 1.0, 3)")
    store = open_store(str(path))
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.claim("k") == 4  # the old rows are still there
    finally:
        store.close()


def test_an_unreachable_postgres_is_a_clear_error(postgres: str) -> None:
    from testing.postgres import PostgresServer

    with PostgresServer() as server:
        url = server.url
        store = open_store(url)
        store.create_session("k")
        server.stop()
        with pytest.raises(StoreError, match="unreachable"):
            store.session_created_at("k")
        server.start()
        assert store.session_created_at("k") is not None  # reconnected, nothing lost
        store.close()
    with pytest.raises(StoreError, match="unreachable"):
        open_store(url)


def test_an_actor_checks_the_schema_without_migrating(url: str) -> None:
    with pytest.raises(StoreError, match="no llmcam schema"):
        open_store(url, migrate=False)
    open_store(url).close()  # the gateway prepares the database
    checked = open_store(url, migrate=False)
    checked.create_session("k")
    assert checked.claim("k") == 1
    checked.close()


V2_TABLES = [
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version (version) VALUES (2)",
    "CREATE TABLE sessions (key TEXT PRIMARY KEY, created_at REAL NOT NULL, "
    "epoch BIGINT NOT NULL DEFAULT 0)",
    "CREATE TABLE messages (key TEXT NOT NULL, seq BIGINT NOT NULL, turn_id TEXT, "
    "body TEXT NOT NULL, PRIMARY KEY (key, seq))",
    "CREATE TABLE streams (key TEXT NOT NULL, noti_id TEXT NOT NULL, spec TEXT NOT NULL, "
    "status TEXT NOT NULL, started_at REAL NOT NULL, sent INTEGER NOT NULL DEFAULT 0, "
    "PRIMARY KEY (key, noti_id))",
    "INSERT INTO sessions VALUES ('old', 5.0, 2)",
    "INSERT INTO messages VALUES ('old', 1, 't', '{\"role\": \"user\", \"content\": \"hi\"}')",
]


def test_a_version_2_database_gains_owners_and_usage(url: str) -> None:
    """Sessions written before users existed belong to nobody, keep their history, and were
    last used when they were made; the new records work on them."""
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            for statement in V2_TABLES:
                conn.execute(statement.replace("REAL", "DOUBLE PRECISION"))
    else:
        with sqlite3.connect(url) as conn:
            for statement in V2_TABLES:
                conn.execute(statement)
    store = open_store(url)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        row = store.session_row("old")
        assert row is not None and row.owner is None and row.created_at == 5.0
        assert [m.body["content"] for m in store.messages("old")] == ["hi"]
        assert store.expired_sessions(6.0) == ["old"]  # last used: when it was made
        epoch = store.claim("old")
        store.add_tokens("old", "user:a", 10, 5)
        assert store.session_usage("old") == {"prompt_tokens": 10, "completion_tokens": 5}
        assert store.usage_today("user:a")["tokens_today"] == 15
        assert store.put_stream("old", epoch, "n1", {"task": "t"}, "running", "user:a", 1)
        assert not store.put_stream("old", epoch, "n2", {"task": "t"}, "running", "user:a", 1)
    finally:
        store.close()


def test_owned_sessions_are_listed_for_their_owner_only(store: Store) -> None:
    store.create_session("k1", "alice", "sid-1")
    store.create_session("k2", "alice", "sid-2")
    store.create_session("k3", "bob", "sid-3")
    store.create_session("k4")  # nobody's: its ID is not kept
    epoch = store.claim("k1")
    store.begin_turn("k1", epoch, "t1", {"role": "user", "content": "x" * 100}, "user:alice")
    listed = store.sessions_of("alice")
    assert [s["session_id"] for s in listed] == ["sid-1", "sid-2"]
    assert listed[0]["title"] == "x" * 80 and listed[0]["message_count"] == 1
    assert [s["session_id"] for s in store.sessions_of("bob")] == ["sid-3"]
    assert store.usage_today("user:alice")["turns_today"] == 1


def test_rate_windows_count_and_expire(store: Store) -> None:
    assert [store.rate_incr("w", 0.5) for _ in range(3)] == [1, 2, 3]
    assert store.rate_get("w")[0] == 3
    import time

    time.sleep(0.6)
    assert store.rate_get("w")[0] == 0
    assert store.rate_incr("w", 0.5) == 1  # a new window
    store.rate_clear("w")
    assert store.rate_get("w")[0] == 0


def test_events_beyond_keep_are_dropped(store: Store) -> None:
    store.create_session("k")
    epoch = store.claim("k")
    for i in range(5):
        store.add_event("k", epoch, "n", f"e{i}", keep=3)
    assert [m for _, _, m, _ in store.events_after("k", 0)] == ["e2", "e3", "e4"]
