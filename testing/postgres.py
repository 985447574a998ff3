"""A real, throwaway PostgreSQL 15 server for tests and benchmarks.

Why: session state lives in PostgreSQL in production, and a stand-in (SQLite, mocks) would not
show connection limits, reconnects after the server goes away, or concurrent writers. This starts
a private server in a temp directory, on a free port of 127.0.0.1 only, with its unix socket in
that directory too, so parallel runs and other users of the machine never see each other.

PostgreSQL refuses to run as root; we run tests as root (here and in CI), so when the effective
uid is 0 every server binary is run as the `postgres` user via `runuser` and the temp directory is
handed to that user. The binaries come from /usr/lib/postgresql/15/bin (Debian's layout), falling
back to PATH; install them with `apt-get install postgresql`.

Durability is switched off (fsync, synchronous_commit, full_page_writes): a crash of this server
loses recent commits, which is fine for tests and makes start-up and writes fast. Authentication
is `trust` for 127.0.0.1 and the socket: anyone on this machine who finds the port can connect,
so never put real data in it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from testing import free_port

PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"  # the OS account the server runs as when we are root; also the DB superuser
DATABASE = "llmcam"

_CONFIG = """
# --- written by testing/postgres.py ---
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 400          # many session actors each hold a connection
shared_buffers = 32MB
# a throwaway test server: durability off for speed (a crash may lose recent commits)
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
"""

_HBA = """# written by testing/postgres.py: loopback and this server's own socket only, no passwords
local all all trust
host  all all 127.0.0.1/32 trust
"""


class PostgresError(RuntimeError):
    """The test PostgreSQL server could not be set up, started or stopped."""


def _find_binary(name: str) -> str:
    candidate = PG_BIN_DIR / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise PostgresError(
        f"PostgreSQL server binary {name!r} not found in {PG_BIN_DIR} or on PATH; "
        "install PostgreSQL 15 with `apt-get install postgresql` (CI's setup script does this)"
    )


class PostgresServer:
    """A private PostgreSQL server on 127.0.0.1:`port` with a database `llmcam`.

    Use as a context manager (``with PostgresServer() as pg: connect(pg.url)``); leaving it stops
    the server and deletes its directory. `stop()` and `start()` may be called in between to make
    the database unreachable and bring it back with the same data and port; `kill()` SIGKILLs
    the server to simulate a crash (a later `start()` runs crash recovery).
    """

    def __init__(self, database: str = DATABASE, port: int | None = None,
                 start_timeout: float = 30.0) -> None:
        self.database = database
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self._initdb = _find_binary("initdb")
        self._pg_ctl = _find_binary("pg_ctl")
        self._createdb = _find_binary("createdb")
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres and shutil.which("runuser") is None:
            raise PostgresError("running as root needs `runuser` (util-linux) to start PostgreSQL")
        self._dir: Path | None = None
        self._created = False

    # -- public API -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A libpq/psycopg connection URL, e.g. ``postgresql://postgres@127.0.0.1:5432/llmcam``."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """The same as `url`, in libpq's key=value form."""
        return f"host=127.0.0.1 port={self.port} user={PG_USER} dbname={self.database}"

    @property
    def directory(self) -> Path:
        """The temp directory holding the data directory, the socket and `server.log`."""
        if self._dir is None:
            raise PostgresError("the server has not been set up yet; call start()")
        return self._dir

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    def start(self) -> PostgresServer:
        """Start the server (creating the cluster and the database the first time); returns self.

        Blocks until it accepts connections. Starting a running server is a no-op.
        """
        if self._dir is None:
            self._setup()
        if self.is_running():
            return self
        self._clear_stale_locks()
        self._run([self._pg_ctl, "start", "-D", str(self.data_dir), "-l", str(self.log_file),
                   "-w", "-t", str(int(self.start_timeout)), "-s"], what="start")
        if not self._created:
            self._run([self._createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER,
                       self.database], what="create the database")
            self._created = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server cleanly (``mode``: smart, fast or immediate); the data stays."""
        if self._dir is None or not self.is_running():
            return
        self._run([self._pg_ctl, "stop", "-D", str(self.data_dir), "-m", mode, "-w",
                   "-t", str(int(self.start_timeout)), "-s"], what="stop")

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends, like a crash or a dead machine."""
        pid = self._postmaster_pid()
        if pid is None:
            return
        children = _children(pid)
        for p in [pid, *children]:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in [pid, *children]):
            if time.monotonic() > deadline:
                raise PostgresError(f"PostgreSQL processes {[pid, *children]} did not die")
            time.sleep(0.05)
        # Dead processes stay zombies until their parent (init, here) reaps them: about 1.4 s on
        # our VMs. Give it a moment so that start() finds a clean state; see _clear_stale_locks.
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)

    def is_running(self) -> bool:
        """Whether the postmaster of this data directory is alive."""
        pid = self._postmaster_pid()
        return pid is not None and _alive(pid)

    def close(self) -> None:
        """Stop the server (forcefully if need be) and delete its directory."""
        if self._dir is None:
            return
        try:
            self.stop(mode="immediate")
        except PostgresError:
            self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._created = False

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresServer({self.url!r}, dir={self._dir})"

    # -- internals --------------------------------------------------------------------------

    def _setup(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="llmcam-pg-"))
        try:
            if self._as_postgres:
                user = pwd.getpwnam(PG_USER)
                os.chown(self._dir, user.pw_uid, user.pw_gid)
            self._run([self._initdb, "-D", str(self.data_dir), "-U", PG_USER, "-A", "trust",
                       "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                      what="initdb")
            with open(self.data_dir / "postgresql.conf", "a") as f:
                f.write(_CONFIG.format(port=self.port, socket_dir=self._dir))
            (self.data_dir / "pg_hba.conf").write_text(_HBA)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            raise

    def _run(self, cmd: list[str], what: str) -> None:
        if self._as_postgres:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        # A clean environment: no PGHOST/PGPORT/... of the caller leaks into createdb or pg_ctl.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        result = subprocess.run(cmd, cwd=self._dir, env=env, capture_output=True, text=True,
                                timeout=self.start_timeout + 30)
        if result.returncode != 0:
            log = ""
            if self._dir is not None and self.log_file.exists():
                log = "\n--- server.log (tail) ---\n" + self.log_file.read_text()[-3000:]
            raise PostgresError(f"PostgreSQL {what} failed (exit {result.returncode}): "
                                f"{' '.join(cmd)}\n{result.stdout}{result.stderr}{log}")

    def _clear_stale_locks(self) -> None:
        """Remove the lock files of a postmaster that was killed but is still an unreaped zombie.

        PostgreSQL checks a lock file's PID with kill(pid, 0), which succeeds for a zombie, and
        then refuses to start. A dead postmaster's lock files (and its small System V segment,
        which PostgreSQL would otherwise clean up itself) are removed here instead.
        """
        lock = self.data_dir / "postmaster.pid"
        try:
            lines = lock.read_text().split("\n")
            pid = int(lines[0])
        except (OSError, ValueError):
            return
        if not os.path.exists(f"/proc/{pid}"):
            return  # really gone: PostgreSQL handles a stale lock file itself
        if _alive(pid):
            return
        shmid = lines[6].split()[1] if len(lines) > 6 and len(lines[6].split()) == 2 else None
        lock.unlink(missing_ok=True)
        (self.directory / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)
        if shmid and shutil.which("ipcrm"):
            subprocess.run(["ipcrm", "-m", shmid], capture_output=True)

    def _postmaster_pid(self) -> int | None:
        if self._dir is None:
            return None
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (PostgreSQL backends are children of the postmaster)."""
    result = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            result.append(int(entry))
    return result
