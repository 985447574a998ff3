"""Liveness: 200 while Ray answers, else 503."""

from __future__ import annotations

import asyncio

import ray
from fastapi import APIRouter
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> JSONResponse:
    try:
        if not ray.is_initialized():
            raise ConnectionError
        await asyncio.wait_for(asyncio.to_thread(ray.cluster_resources), timeout=5)
    except Exception:
        return JSONResponse({"detail": "the Ray cluster is unreachable"}, status_code=503)
    return JSONResponse({"status": "ok"})
