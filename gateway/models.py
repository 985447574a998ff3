"""Pydantic models for every request and answer body of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class NewSession(BaseModel):
    session_id: str


class Stream(BaseModel):
    noti_id: str
    status: Literal["running", "stopped", "failed", "expired"]
    started_at: float
    sent: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class SessionInfo(BaseModel):
    session_id: str
    created_at: float
    message_count: int
    notifications: list[Stream]
    usage: Usage


class SessionListed(BaseModel):
    session_id: str
    created_at: float
    last_active: float
    title: str
    message_count: int


class DayUsage(BaseModel):
    tokens_today: int
    turns_today: int


class Me(BaseModel):
    user: str | None
    auth: Literal["none", "proxy", "oidc"]
    usage: DayUsage
    limits: dict[str, float]
    llm_configured: bool = True  # False: no OPENAI_API_KEY nor OPENAI_BASE_URL (the page says so)


class Message(BaseModel):
    """An OpenAI chat message as stored (role, content, tool_calls, tool_call_id)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    content: Any = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class PostMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content: str = Field(min_length=1, max_length=32000)


class Confirm(BaseModel):
    """The user's answer to a `confirm` event of the turn in flight."""

    model_config = ConfigDict(extra="forbid")
    call_id: str = Field(min_length=1, max_length=200)
    allow: bool


class Reply(BaseModel):
    reply: str
    messages: list[Message]


class FileEntry(BaseModel):
    name: str
    kind: Literal["capture", "detection", "plot", "upload"]
    size: int
    created_at: float


class Problem(BaseModel):
    detail: str
