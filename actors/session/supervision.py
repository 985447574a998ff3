"""Supervision of notification streams: every session with a running stream has its child.

A child resumes its streams after its own crash (Ray restarts it) and a session's actor starts
one at its activation, but after a whole-cluster restart nobody may ask for a session for hours
while its streams should run. So the registry (one per cluster) looks, for each store, shortly
after it starts and then every `PERIOD_S`: one indexed read of the sessions with running rows
and one listing of Ray's named actors; a session without a child gets one (`sync_child`, the
same call the session's actor makes, so the two never make two)."""

from __future__ import annotations

import asyncio
import logging

import ray

from actors.session.names import NAMESPACE
from actors.session.notification import PREFIX, sync_child
from actors.settings import Settings
from actors.store import Store, open_store

FIRST_S = 1.0
PERIOD_S = 30.0
log = logging.getLogger(__name__)


def _with_child() -> set[str]:
    return {a["name"][len(PREFIX):] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and a["name"].startswith(PREFIX)}


async def supervise_once(store: Store, settings: Settings) -> int:
    """Start the child of every session that has running streams and none; how many."""
    keys = await asyncio.to_thread(store.sessions_with_streams)
    if not keys:
        return 0
    have = await asyncio.to_thread(_with_child)
    started = 0
    for key in [k for k in keys if k not in have]:
        try:
            await sync_child(key, settings)
            started += 1
        except Exception as exc:
            log.warning("notification streams of %s not resumed: %s", key, type(exc).__name__)
    if started:
        log.info("resumed the notification streams of %d sessions", started)
    return started


async def supervise_forever(settings: Settings) -> None:
    store: Store | None = None
    delay = FIRST_S
    try:
        while True:
            await asyncio.sleep(delay)
            delay = PERIOD_S
            try:
                if store is None:
                    store = await asyncio.to_thread(open_store, settings.db_url, migrate=False)
                await supervise_once(store, settings)
            except Exception as exc:  # the store is down: the next period tries again
                log.warning("stream supervision failed: %s", type(exc).__name__)
    finally:
        if store is not None:
            store.close()
