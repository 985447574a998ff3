"""LiveSessions: the cluster's count of live session actors, and who makes room under the cap.

One small named actor per cluster (every gateway shares it). A gateway asks `admit` only before
it starts a session's actor (a cold activation); warm requests never come here. Session actors
tell it when they come up, when they were last used (at most once a second) and when they end.
When the cap is reached, the least recently used live session is asked to passivate; an actor
that is busy (a turn in flight, an open /events stream) says no
and the next one is asked; when none can go, `admit` answers how long to wait (the gateway's
503 with Retry-After). The same holds per user (`LLMCAM_USER_LIVE_SESSIONS`): a user over their
share makes room among their own sessions first, and gets a 429 when all of theirs are busy.
The actors decide for themselves, on their own event loop, so a session is never shed mid-turn.
The registry's state is soft: rebuilt from Ray's named actors if it restarts, and pruned the
same way when the count looks full.

Being the one actor per cluster, it also counts each user's open listeners (leases that their
gateway renews, so a gateway that dies frees its users' places within `LEASE_S`), runs the
retention sweep (sessions unused for `LLMCAM_SESSION_TTL_SECONDS` are deleted whole) and
supervises the notification streams (actors/session/supervision.py: running rows have a child).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from actors.metrics import record
from actors.session.names import NAMESPACE

log = logging.getLogger(__name__)
REGISTRY_NAME = "live-sessions"
PREFIX = "session:"
RETRY_AFTER_S = 2
LEASE_S = 60.0  # a listener's place is kept this long after its gateway last renewed it
MEMORY_PER_SESSION = 60 * 1024 * 1024  # what a live session actor costs, with headroom


def live_cap(settings: Any) -> int:
    """How many session actors may be live at once in the cluster: LLMCAM_MAX_LIVE_SESSIONS, or
    the cluster's memory at ~60 MB a session (at least 4)."""
    if settings.max_live_sessions:
        return int(settings.max_live_sessions)
    return max(4, int(ray.cluster_resources().get("memory", 0.0) // MEMORY_PER_SESSION))


def _live_keys() -> set[str]:
    return {a["name"][len(PREFIX):] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and a["name"].startswith(PREFIX)}


class LiveSessions:
    def __init__(self, cap: int) -> None:
        self._cap = max(1, int(cap))
        self._used: dict[str, float] = dict.fromkeys(_live_keys(), 0.0)  # key -> last used
        self._holder: dict[str, str] = {}  # key -> the account that activated it
        self._leases: dict[str, tuple[str, float]] = {}  # listener -> (account, expires)
        self._admitting = asyncio.Lock()
        # per store (its URL): the retention sweep and the streams' supervision
        self._sweepers: dict[str, tuple[asyncio.Task[None], ...]] = {}
        self._detector: Any = None  # the detector's deploy task, once one was asked for
        record("live", len(self._used))

    def __repr__(self) -> str:
        return "LiveSessions"

    async def configure(self, cap: int, settings: Any = None) -> int:
        """Every gateway calls this at start; with settings, the retention sweep of its store
        (re)starts with them."""
        self._cap = max(1, int(cap))
        if settings is not None:
            from actors.retention import sweep_forever
            from actors.session.supervision import supervise_forever

            for running in self._sweepers.pop(settings.db_url, ()):
                running.cancel()
            loop = asyncio.get_running_loop()
            self._sweepers[settings.db_url] = (
                loop.create_task(sweep_forever(
                    settings, self._recently_used(settings.session_ttl_seconds))),
                loop.create_task(supervise_forever(settings)))
        return self._cap

    def _recently_used(self, ttl: float) -> Any:
        return lambda key: self._used.get(key, 0.0) > time.time() - ttl

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
        self._holder.pop(key, None)
        if self._used.pop(key, None) is not None and reason == "idle":
            record("passivations", reason=reason)
        record("live", len(self._used))

    # what gateways ask before a cold activation -------------------------------------------------
    async def admit(self, key: str, holder: str | None = None,
                    user_cap: int | None = None) -> dict[str, Any] | None:
        """Make room for `key` to go live for `holder` (an account): None when it may, else
        `{"limit": None (the cluster's cap) or "LLMCAM_USER_LIVE_SESSIONS", "wait": s}`."""
        async with self._admitting:
            if key in self._used:
                self._used[key] = time.time()
                return None
            if holder and user_cap:
                if not await self._make_room(lambda k: self._holder.get(k) == holder,
                                             user_cap):
                    return {"limit": "LLMCAM_USER_LIVE_SESSIONS", "wait": RETRY_AFTER_S}
            if len(self._used) >= self._cap:
                await self._prune()
            if not await self._make_room(lambda k: True, self._cap):
                record("sheds")
                return {"limit": None, "wait": RETRY_AFTER_S}
            self._used[key] = time.time()
            if holder:
                self._holder[key] = holder
            record("live", len(self._used))
            return None

    async def _make_room(self, among: Any, cap: int) -> bool:
        """Passivate the least recently used idle sessions `among` selects until fewer than
        `cap` of them are live; False when every one of them is busy."""
        tried: set[str] = set()
        while True:
            mine = [k for k in self._used if among(k)]
            if len(mine) < cap:
                return True
            candidates = [k for k in mine if k not in tried]
            if not candidates:
                return False
            victim = min(candidates, key=self._used.__getitem__)
            tried.add(victim)
            if await self._passivate(victim):
                self._used.pop(victim, None)
                self._holder.pop(victim, None)

    # listeners: open /events and GET /turn streams, per account ---------------------------------
    async def listen(self, lease: str, account: str, cap: int) -> bool:
        """Take a listener's place for `account` (False: it holds `cap` already)."""
        now = time.time()
        self._leases = {k: v for k, v in self._leases.items() if v[1] > now}
        held = sum(1 for holder, _ in self._leases.values() if holder == account)
        if held >= cap:
            return False
        self._leases[lease] = (account, now + LEASE_S)
        return True

    async def unlisten(self, lease: str) -> None:
        self._leases.pop(lease, None)

    async def renew(self, leases: dict[str, str]) -> None:
        """A gateway's open listeners are still open (also after this actor restarted)."""
        expires = time.time() + LEASE_S
        for lease, account in leases.items():
            self._leases[lease] = (account, expires)

    async def ensure_detector(self, settings: Any, wait: bool = False) -> str | None:
        """Deploy the object detector: one deploy at a time per cluster. A gateway's start
        (`wait`) deploys with its settings once the previous deploy has ended (a deploy with
        the settings already running changes nothing, see `detector.deploy`) and waits for
        the outcome; a session's first detection (an embedded server deploys on first use)
        starts one only where none was started. Answers why the deploy failed, once it has
        (the next call then starts another), else None."""
        running = self._detector
        if running is None or (wait and await _ended(running)):
            running = self._detector = ray.remote(num_cpus=0, max_retries=0)(
                _deploy_detector).options(name="llmcam-detector-deploy").remote(settings)
            if not wait:
                asyncio.get_running_loop().create_task(self._report_deploy(running))
        if not wait and not await _ended(running):
            return None
        try:
            await running
            return None
        except Exception as exc:
            from actors.detector.client import _reason  # (Serve is imported here only on a failure)

            if self._detector is running:
                self._detector = None
            return _reason(exc)

    async def _report_deploy(self, running: Any) -> None:
        """A first use's deploy: its failure is logged once, here (a gateway's start logs the
        outcome of its own)."""
        try:
            await running
        except Exception as exc:
            from actors.detector.client import _reason

            log.error("the object detector could not start (detect_objects answers with the "
                      "reason): %s", _reason(exc))

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


async def _ended(ref: Any) -> bool:
    done, _ = await asyncio.to_thread(ray.wait, [ref], timeout=0)
    return bool(done)


def _deploy_detector(settings: Any) -> None:
    """The detector's deploy, as the registry's Ray task: no thread of a gateway or a session
    waits in Serve, and the registry itself never imports it."""
    from actors.detector.client import deploy

    deploy(settings)


LiveSessionsRemote = ray.remote(LiveSessions)


def registry(cap: int, scheduling: Any = None) -> Any:
    """The cluster's registry, created by the first gateway that asks (race-free by name);
    placed like the session actors (with SQLite, where the file is: it sweeps the store)."""
    options: dict[str, Any] = {}
    if scheduling is not None and scheduling != "SPREAD":
        options["scheduling_strategy"] = scheduling
    return LiveSessionsRemote.options(
        name=REGISTRY_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_restarts=-1, max_task_retries=0, **options).remote(cap)


def registry_handle() -> Any | None:
    """The registry as a session actor finds it (None when no gateway made one)."""
    try:
        return ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
    except ValueError:
        return None
