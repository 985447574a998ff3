"""The app factory: routes, limits, error mapping, and Ray for the app's lifetime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import ray
from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from actors.metrics import record
from actors.session.registry import live_cap, registry
from actors.settings import Settings, from_env
from actors.store import Store, open_store
from gateway import errors, placement, security
from gateway.access_log import AccessLog
from gateway.identity import Identity, get_caller
from gateway.limits import BodyLimit
from gateway.listeners import Listeners
from gateway.quota import Quota
from gateway.ray_conn import connect
from gateway.routes import auth, chat, docs, events, files, health, me, page, sessions, turn
from gateway.routes.page import STATIC
from gateway.session_client import SessionClient

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, include_dashboard: bool | None = None,
               deploy_detector: bool | None = None,
               listen_host: str | None = "127.0.0.1") -> FastAPI:
    settings = settings or from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = await asyncio.to_thread(connect, settings, include_dashboard=include_dashboard)
        store = await asyncio.to_thread(open_store, settings.db_url)
        app.state.sessions = await asyncio.to_thread(session_client, settings, store)
        app.state.quota = Quota(settings, store)
        app.state.listeners = Listeners(app.state.sessions.registry, settings.user_listeners)
        app.state.sessions.spares.start()
        counting = asyncio.create_task(_count_stored(store))
        detector = None
        # a cluster's detector is deployed at start; an embedded one on its first use
        if settings.ray_address if deploy_detector is None else deploy_detector:
            from actors.detector.client import Deployment

            detector = app.state.detector = Deployment(settings, app.state.sessions.registry)
            detector.start()
        try:
            yield
        finally:
            if detector is not None:  # first: nothing may call Serve once Ray is gone
                await detector.stop()
            counting.cancel()
            app.state.listeners.close()
            await app.state.sessions.spares.close()
            store.close()
            if started:
                await asyncio.to_thread(ray.shutdown)

    # /docs is ours (routes/docs.py: Swagger UI from this server, under the strict CSP); no ReDoc
    app = FastAPI(title="llmcam", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None,
                  description="A multi-user camera chatbot: one Ray actor per browser session.")
    app.state.settings = settings
    app.state.identity = Identity(settings)
    # every /api request has a caller (401 without a user where users sign in)
    for module in (me, sessions, chat, turn, events, files):
        app.include_router(module.router, dependencies=[Depends(get_caller)])
    for module in (health, page, docs):
        app.include_router(module.router)
    auth.install(app, settings)  # /login, /auth/callback, /logout; the login-state cookie
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    app.add_middleware(BodyLimit)
    security.install(app, settings, listen_host)  # Host, Origin, headers (also on a 413)
    app.add_middleware(AccessLog)

    errors.install(app)
    return app


def session_client(settings: Settings, store: Store) -> SessionClient:
    """The session client with the cluster's registry (its cap set) and the placement."""
    cap = live_cap(settings)
    scheduling = placement.scheduling(settings)
    live = registry(cap, scheduling)
    ray.get(live.configure.remote(cap, settings))  # also (re)starts the retention sweep
    return SessionClient(settings, store, live, scheduling)


async def _count_stored(store: Store) -> None:
    """Keep the stored-sessions figure current for operators (a COUNT every 30 s)."""
    while True:
        try:
            record("stored", await asyncio.to_thread(store.count_sessions))
        except Exception:  # the store is down: the requests that need it say so
            pass
        await asyncio.sleep(30)
