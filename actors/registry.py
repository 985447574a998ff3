"""LiveSessions: the cluster's count of live session actors, and who makes room under the cap.

One small named actor per cluster (every gateway shares it). A gateway asks `admit` only before
it starts a session's actor (a cold activation); warm requests never come here. Session actors
tell it when they come up, when they were last used (at most once a second) and when they end.
When the cap is reached, the least recently used live session is asked to passivate; an actor
that is busy (a turn in flight, an open /events stream, a running notification stream) says no
and the next one is asked; when none can go, `admit` answers how long to wait (the gateway's
503 with Retry-After). The actors decide for themselves, on their own event loop, so a session
is never shed mid-turn. The registry's state is soft: rebuilt from Ray's named actors if it
restarts, and pruned the same way when the count looks full.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from actors.metrics import record
from actors.names import NAMESPACE

REGISTRY_NAME = "live-sessions"
PREFIX = "session:"
RETRY_AFTER_S = 2
MEMORY_PER_SESSION = 60 * 1024 * 1024  # what a live session actor costs, with headroom


def default_cap(cluster_memory_bytes: float) -> int:
    """LLMCAM_MAX_LIVE_SESSIONS when unset: the cluster's memory at ~60 MB a session."""
    return max(4, int(cluster_memory_bytes // MEMORY_PER_SESSION))


def _live_keys() -> set[str]:
    return {a["name"][len(PREFIX):] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and a["name"].startswith(PREFIX)}


class LiveSessions:
    def __init__(self, cap: int) -> None:
        self._cap = max(1, int(cap))
        self._used: dict[str, float] = dict.fromkeys(_live_keys(), 0.0)  # key -> last used
        self._admitting = asyncio.Lock()
        record("live", len(self._used))

    def __repr__(self) -> str:
        return "LiveSessions"

    async def configure(self, cap: int) -> int:
        self._cap = max(1, int(cap))
        return self._cap

    async def status(self) -> dict[str, Any]:
        return {"cap": self._cap, "live": len(self._used)}

    # what session actors report (fire and forget) -----------------------------------------------
    async def up(self, key: str) -> None:
        self._used[key] = time.time()
        record("live", len(self._used))

    async def touch(self, key: str, at: float) -> None:
        if key in self._used:
            self._used[key] = max(self._used[key], at)
        else:
            self._used[key] = at
            record("live", len(self._used))

    async def gone(self, key: str, reason: str) -> None:
        # A shed is counted where it is asked for (`_passivate`): the victim's own report may
        # come before or after the admission forgets it.
        if self._used.pop(key, None) is not None and reason == "idle":
            record("passivations", reason=reason)
        record("live", len(self._used))

    # what gateways ask before a cold activation -------------------------------------------------
    async def admit(self, key: str) -> float | None:
        """Make room for `key` to go live: None when it may, else seconds to wait."""
        async with self._admitting:
            if key in self._used:
                self._used[key] = time.time()
                return None
            if len(self._used) >= self._cap:
                await self._prune()
            tried: set[str] = set()
            while len(self._used) >= self._cap:
                candidates = [k for k in self._used if k not in tried]
                if not candidates:
                    record("sheds")
                    return RETRY_AFTER_S
                victim = min(candidates, key=self._used.__getitem__)
                tried.add(victim)
                if await self._passivate(victim):
                    self._used.pop(victim, None)
            self._used[key] = time.time()
            record("live", len(self._used))
            return None

    async def _passivate(self, key: str) -> bool:
        """Ask one live session to go; True when it went (or was gone already)."""
        try:
            handle = await asyncio.to_thread(ray.get_actor, PREFIX + key, namespace=NAMESPACE)
        except ValueError:
            return True  # no such actor any more
        try:
            went = await asyncio.wait_for(handle.passivate_if_idle.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            return True
        except (TimeoutError, ray.exceptions.RayError):
            return False
        if went:
            record("passivations", reason="shed")
        return bool(went)

    async def _prune(self) -> None:
        """Forget sessions whose actors died without saying so (killed, node lost)."""
        alive = await asyncio.to_thread(_live_keys)
        for key in [k for k in self._used if k not in alive]:
            del self._used[key]


LiveSessionsRemote = ray.remote(LiveSessions)


def registry(cap: int) -> Any:
    """The cluster's registry, created by the first gateway that asks (race-free by name)."""
    return LiveSessionsRemote.options(
        name=REGISTRY_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_task_retries=0).remote(cap)


def registry_handle() -> Any | None:
    """The registry as a session actor finds it (None when no gateway made one)."""
    try:
        return ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
    except ValueError:
        return None
