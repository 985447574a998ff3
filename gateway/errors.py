"""One map from the errors the actors and the session client raise to what HTTP callers see.

Actors never pick status codes; each error type is mapped here once. A Ray-wrapped error
(`RayTaskError(SessionGone)`) is an instance of its cause, so the same handler answers it.
"""

from __future__ import annotations

import logging
import math

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from actors.errors import (
    FilesFull,
    LimitExceeded,
    NotFound,
    Passivating,
    SessionGone,
    SessionsFull,
    SignInNeeded,
    StoreError,
    TooManyListeners,
    cause_text,
)

UNKNOWN = "unknown session"
log = logging.getLogger(__name__)


def install(app: FastAPI) -> None:
    @app.exception_handler(SessionGone)
    async def gone(_: Request, exc: SessionGone) -> JSONResponse:
        return JSONResponse({"detail": UNKNOWN}, status_code=404)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": cause_text(exc)}, status_code=404)

    @app.exception_handler(SessionsFull)
    async def full(_: Request, exc: SessionsFull) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503,
                            headers={"Retry-After": str(math.ceil(exc.retry_after))})

    @app.exception_handler(LimitExceeded)
    async def limited(_: Request, exc: LimitExceeded) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "limit": exc.limit}, status_code=429,
                            headers={"Retry-After": str(math.ceil(exc.retry_after))})

    @app.exception_handler(SignInNeeded)
    async def sign_in(_: Request, exc: SignInNeeded) -> JSONResponse:
        body = {"detail": str(exc)}
        if exc.login:
            body["login"] = exc.login
        return JSONResponse(body, status_code=401)

    @app.exception_handler(TooManyListeners)
    async def listeners(_: Request, exc: TooManyListeners) -> JSONResponse:
        return JSONResponse({"detail": cause_text(exc)}, status_code=429)

    @app.exception_handler(FilesFull)
    async def files_full(_: Request, exc: FilesFull) -> JSONResponse:
        return JSONResponse({"detail": cause_text(exc)}, status_code=409)

    @app.exception_handler(StoreError)
    async def store_down(_: Request, exc: StoreError) -> JSONResponse:
        log.warning("store failed: %s", cause_text(exc))
        return JSONResponse({"detail": "the session store is unreachable; nothing was lost, "
                             "try again shortly"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.exception_handler(Passivating)
    @app.exception_handler(ray.exceptions.RayActorError)
    @app.exception_handler(ray.exceptions.RaySystemError)
    @app.exception_handler(ray.exceptions.ActorUnavailableError)
    @app.exception_handler(ConnectionError)
    async def ray_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("Ray call failed: %s", type(exc).__name__)
        return JSONResponse({"detail": "the Ray cluster is unreachable or the session's actor "
                             "could not be started"}, status_code=503,
                            headers={"Retry-After": "5"})
