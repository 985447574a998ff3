"""Retention: a session unused for `LLMCAM_SESSION_TTL_SECONDS` is deleted whole (its rows,
files, events and streams; its actor and stream children if live). It runs in the registry
actor, which exists once per cluster, one sweep per store; when there is nothing to delete a
sweep is one indexed read every `period` seconds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import ray

from actors.session.names import NAMESPACE
from actors.session.notification import stop_child
from actors.settings import Settings
from actors.store import Store, open_store

PREFIX = "session:"
MAX_PERIOD_S = 600.0
log = logging.getLogger(__name__)


def sweep_period(ttl: float) -> float:
    return min(max(ttl / 4, 0.5), MAX_PERIOD_S)


async def sweep_once(store: Store, ttl: float,
                     recently_used: Callable[[str], bool] = lambda key: False) -> int:
    """Delete the sessions unused for `ttl` seconds; how many went."""
    keys = await asyncio.to_thread(store.expired_sessions, time.time() - ttl)
    gone = 0
    for key in keys:
        if recently_used(key):  # live and used lately (reads do not touch the row)
            continue
        await _delete(store, key)
        gone += 1
    await asyncio.to_thread(store.rate_clear)  # expired rate windows
    return gone


async def _delete(store: Store, key: str) -> None:
    try:
        handle: Any = await asyncio.to_thread(ray.get_actor, PREFIX + key, namespace=NAMESPACE)
    except ValueError:
        handle = None
    if handle is not None:
        try:  # it stops its streams and deletes its rows
            await asyncio.wait_for(handle.delete.remote(), 30)
        except Exception:  # dead or stuck: the kill and the delete below settle it
            pass
        ray.kill(handle, no_restart=True)
    await stop_child(key)  # its streams stop even while the session's own actor rests
    await asyncio.to_thread(store.delete_session, key)
    log.info("session %s deleted after LLMCAM_SESSION_TTL_SECONDS unused", key)


async def sweep_forever(settings: Settings,
                        recently_used: Callable[[str], bool] = lambda key: False) -> None:
    ttl = settings.session_ttl_seconds
    if ttl <= 0:
        return
    period = sweep_period(ttl)
    store: Store | None = None
    try:
        while True:
            await asyncio.sleep(period)
            try:
                if store is None:
                    store = await asyncio.to_thread(open_store, settings.db_url, migrate=False)
                await sweep_once(store, ttl, recently_used)
            except Exception as exc:  # the store is down: the next period tries again
                log.warning("retention sweep failed: %s", type(exc).__name__)
    finally:
        if store is not None:
            store.close()
