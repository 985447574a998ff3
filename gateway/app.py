"""The app factory: routes, limits, error mapping, and Ray for the app's lifetime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from actors.errors import NotFound, SessionGone
from actors.settings import Settings, from_env
from actors.store import open_store
from gateway.access_log import AccessLog
from gateway.limits import BodyLimit
from gateway.ray_conn import connect
from gateway.routes import chat, events, files, health, page, sessions
from gateway.routes.page import STATIC
from gateway.sessions import UNKNOWN, Sessions

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, include_dashboard: bool | None = None,
               deploy_detector: bool = True) -> FastAPI:
    settings = settings or from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = await asyncio.to_thread(connect, settings, include_dashboard=include_dashboard)
        store = open_store(settings.db_url)
        app.state.sessions = Sessions(settings, store)
        app.state.sessions.spares.start()
        if deploy_detector:
            from actors.detector import deploy

            app.state.detector = asyncio.create_task(asyncio.to_thread(deploy, settings))
        try:
            yield
        finally:
            await app.state.sessions.spares.close()
            store.close()
            if started:
                await asyncio.to_thread(ray.shutdown)

    app = FastAPI(title="llmcam", version="0.1.0", lifespan=lifespan,
                  description="A multi-user camera chatbot: one Ray actor per browser session.")
    app.state.settings = settings
    for module in (sessions, chat, events, files, health, page):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    app.add_middleware(BodyLimit)
    app.add_middleware(AccessLog)

    @app.exception_handler(SessionGone)
    async def gone(_: Request, exc: SessionGone) -> JSONResponse:
        return JSONResponse({"detail": UNKNOWN}, status_code=404)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": "not found"}, status_code=404)

    @app.exception_handler(ray.exceptions.RayActorError)
    @app.exception_handler(ray.exceptions.RaySystemError)
    @app.exception_handler(ray.exceptions.ActorUnavailableError)
    @app.exception_handler(ConnectionError)
    async def ray_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("Ray call failed: %s", type(exc).__name__)
        return JSONResponse({"detail": "the Ray cluster is unreachable or the session's actor "
                             "could not be started"}, status_code=503)

    return app
