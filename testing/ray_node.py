"""A second Ray node (raylet) on 127.0.0.1 that a test can kill hard to simulate node death.

Why: session actors must survive the loss of the machine they run on (detached actors with
max_restarts are rescheduled elsewhere), and the only honest way to test that is to really kill
a raylet and every worker process it started, with SIGKILL, as a dead machine would.

How: `ray start --address` refuses to add a node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
which we need because otherwise Ray rewrites 127.0.0.1 to the machine's outward address. So the
node is started the way `ray.cluster_utils.Cluster.add_node` does it, through
`ray._private.node.Node(head=False)`, but in a separate Python process (`_ray_node_main.py`)
started with `start_new_session=True`. The raylet and its agents stay in that process group;
Ray 2.60's raylet puts each worker in a process group of its own ("per-worker process group
cleanup"), but workers stay in the session. So `kill()` SIGKILLs the group, every process of the
session, and every descendant found before the kill, and waits until none is left.

Every port the node listens on is a free port of 127.0.0.1 picked here, so the node never
collides with the head (worker ports are left to the OS unless a range is given). Ray's token
authentication is followed: a head started by `ray.init()` in Ray 2.60 turns it on by default
(RAY_AUTH_MODE=token in the driver's environment, token in ~/.ray/auth_token); when the calling
process is in token mode the node gets RAY_AUTH_MODE=token and, unless the environment already
names a token, the token itself in RAY_AUTH_TOKEN.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from testing import free_port

_MAIN = Path(__file__).with_name("_ray_node_main.py")
_AUTH_TOKEN_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class RayNodeError(RuntimeError):
    """The extra Ray node could not be started or killed."""


class _NodeExited(Exception):
    """The node's process died before the node joined (worth another try)."""


def _auth_env() -> dict[str, str]:
    """RAY_AUTH_* for the node if this process talks to the cluster with token authentication."""
    try:
        from ray._raylet import (
            AuthenticationMode,
            AuthenticationTokenLoader,
            get_authentication_mode,
        )
    except ImportError:  # a Ray without token authentication
        return {}
    if get_authentication_mode() != AuthenticationMode.TOKEN:
        return {}
    env = {"RAY_AUTH_MODE": "token"}
    if not any(os.environ.get(var) for var in _AUTH_TOKEN_VARS):
        token = AuthenticationTokenLoader.instance().get_raw_token()
        if token:
            env["RAY_AUTH_TOKEN"] = token
    return env


class RayNode:
    """A non-head Ray node joining the cluster at `gcs_address`, killable with `kill()`.

    ``with RayNode(gcs, {"node2": 1}) as node: node_id = node.start()`` starts it and waits
    until it is alive in `ray.nodes()` (so the caller must be a connected driver); leaving the
    block kills it. Schedule onto it with ``resources={"node2": 0.01}``.
    """

    def __init__(self, gcs_address: str, resources: dict[str, float], num_cpus: int = 1,
                 env: dict[str, str] | None = None, *,
                 object_store_memory: int = 100 * 1024 * 1024,
                 worker_port_range: tuple[int, int] | None = None,
                 labels: dict[str, str] | None = None) -> None:
        self.gcs_address = gcs_address
        self.resources = dict(resources)
        self.num_cpus = num_cpus
        self.extra_env = dict(env or {})
        self.object_store_memory = object_store_memory
        self.worker_port_range = worker_port_range
        self.labels = labels
        self.node_id: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """PID of the node's main process, which is also its process group and session id."""
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> str | None:
        """Where the node's main process writes its stderr (Ray's own logs are in the session
        directory of the cluster, /tmp/ray/session_latest/logs, as for the head)."""
        return self._log.name if self._log else None

    def ray_params(self) -> dict[str, Any]:
        """Keyword arguments for `ray._private.parameter.RayParams`, with fresh free ports."""
        min_port, max_port = self.worker_port_range or (0, 0)
        return {
            "gcs_address": self.gcs_address,
            "node_ip_address": "127.0.0.1",
            "num_cpus": self.num_cpus,
            "num_gpus": 0,
            "resources": self.resources,
            "labels": self.labels,
            "object_store_memory": self.object_store_memory,
            "node_manager_port": free_port(),
            "object_manager_port": free_port(),
            "runtime_env_agent_port": free_port(),
            "metrics_agent_port": free_port(),  # the dashboard agent's gRPC port
            "dashboard_agent_listen_port": free_port(),  # the dashboard agent's HTTP port
            "metrics_export_port": free_port(),
            "min_worker_port": min_port,  # 0 and 0: each worker gets a port from the OS
            "max_worker_port": max_port,
            "include_log_monitor": False,  # the head's log monitor reads the shared session dir
        }

    def environment(self) -> dict[str, str]:
        """The node's environment: ours, loopback-only Ray, token auth if on, then `env`."""
        env = dict(os.environ)
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep every address on 127.0.0.1
        env.update(_auth_env())
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60, attempts: int = 2) -> str:
        """Start the node and wait until `ray.nodes()` shows it alive; returns its node id (hex).

        On a loaded machine the new raylet can crash while starting (Ray 2.60 aborts it when its
        dashboard agent takes over ~15 s to come up, seen here with 2 busy cores), so a node
        process that dies before joining is started again, up to `attempts` times in all, with
        fresh ports, within the same `timeout`. After `kill()`, `start()` starts a new node (a
        new node id) with the same settings.
        """
        if self._proc is not None and self._proc.poll() is None:
            raise RayNodeError("this RayNode is running; kill() it before starting it again")
        deadline = time.monotonic() + timeout
        for attempt in range(1, attempts + 1):
            self._launch()
            try:
                return self._await_alive(deadline, timeout)
            except _NodeExited as e:
                self.kill()
                if (attempt == attempts or time.monotonic() > deadline
                        or "InvalidAuthToken" in str(e)):
                    raise RayNodeError(str(e)) from None
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        if self._log is None:
            self._log = tempfile.NamedTemporaryFile(prefix="llmcam-raynode-", suffix=".log",
                                                    delete=False)
        self.node_id = None
        self._proc = subprocess.Popen(
            [sys.executable, str(_MAIN), json.dumps(self.ray_params())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            env=self.environment(), start_new_session=True, cwd=tempfile.gettempdir())

    def _await_alive(self, deadline: float, timeout: float) -> str:
        import ray

        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        # The node's id comes as one line once Node() has returned (it may hang retrying GCS).
        while not select.select([stdout], [], [], 0.2)[0]:
            if time.monotonic() > deadline:
                self.kill()
                raise RayNodeError(f"the Ray node did not start within {timeout} s:\n"
                                   f"{self._log_tail()}")
        line = stdout.readline()
        if not line:
            self._proc.wait()
            raise _NodeExited(f"the Ray node process exited ({self._proc.returncode}) before "
                              f"starting:\n{self._log_tail()}")
        node_id: str = json.loads(line)["node_id"]
        self.node_id = node_id
        while time.monotonic() < deadline:
            if any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
                return node_id
            if self._proc.poll() is not None:
                raise _NodeExited(f"the Ray node process exited ({self._proc.returncode}):\n"
                                  f"{self._log_tail()}")
            time.sleep(0.2)
        self.kill()
        raise RayNodeError(f"the Ray node {node_id} did not show up alive in ray.nodes() "
                           f"within {timeout} s:\n{self._log_tail()}")

    def processes(self) -> list[int]:
        """PIDs of the node's live processes: its process group, its session, its descendants."""
        if self._proc is None:
            return []
        return sorted(_node_processes(self._proc.pid, root_alive=self._proc.returncode is None))

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the raylet and every process it started; waits until they are all dead."""
        if self._proc is None:
            return
        root = self._proc.pid
        deadline = time.monotonic() + timeout
        while True:
            # Collected before killing: once a parent dies its children are re-parented to init
            # and the parent chain no longer leads back to the node.
            pids = _node_processes(root, root_alive=self._proc.returncode is None)
            if not pids:
                break
            try:
                os.killpg(root, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise RayNodeError(f"processes of the Ray node survived SIGKILL: {sorted(pids)}")
            time.sleep(0.05)
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> RayNode:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.kill()
        if self._log is not None:
            self._log.close()
            os.unlink(self._log.name)

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-3000:]


def _proc_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, pgid, sid) for every live (non-zombie) process, read from /proc."""
    table: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] in ("Z", "X"):
            continue
        table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[3]))
    return table


def _node_processes(root: int, root_alive: bool = True) -> set[int]:
    """Live processes in `root`'s process group or session, or descended from `root`.

    `root_alive` says that `root` is our unreaped child, so its PID still means that process;
    once reaped, the PID may be reused, and only the group and session ids stay meaningful
    (Linux does not hand out a PID that is still some process's group or session id).
    """
    table = _proc_table()
    found = {pid for pid, (_, pgid, sid) in table.items() if root in (pgid, sid)}
    if root_alive and root in table:
        found.add(root)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found
