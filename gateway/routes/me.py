"""Who the caller is, what they spent today and the limits they run under."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.deps import CallerDep, QuotaDep
from gateway.models import DayUsage, Me

router = APIRouter(prefix="/api/me", tags=["users"])


@router.get("", response_model=Me)
async def me(caller: CallerDep, quota: QuotaDep, request: Request) -> Me:
    """The signed-in user's shown name (null when nobody signs in), the day's usage (UTC),
    each per-user limit, and whether the server has an LLM configured."""
    settings = request.app.state.settings
    return Me(user=caller.name, auth=settings.auth or "none",
              usage=DayUsage(**await quota.usage(caller)), limits=settings.limits(),
              llm_configured=settings.llm_configured)
