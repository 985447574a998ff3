"""The one place configuration is read from the environment.

The gateway builds a `Settings` once and hands it to every actor and deployment it creates: on a
cluster an actor runs in its node's environment, not the gateway's: nothing else reads the env.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator

BUILTIN_TOOL_MODULES = ("actors.tools.camera", "actors.tools.vision", "actors.tools.files")
CONFIRM_TOOLS = ("add_api_tools", "add_function_tools", "start_notification_stream",
                 "execute_bash_command")
# The per-user limits as API.md names them: setting -> variable (what /api/me and a 429 show).
LIMITS = {
    "rate_sessions": "LLMCAM_RATE_SESSIONS", "rate_turns": "LLMCAM_RATE_TURNS",
    "user_live_sessions": "LLMCAM_USER_LIVE_SESSIONS", "user_listeners": "LLMCAM_USER_LISTENERS",
    "user_streams": "LLMCAM_USER_STREAMS", "min_stream_interval": "LLMCAM_MIN_STREAM_INTERVAL",
    "stream_hours": "LLMCAM_STREAM_HOURS", "token_budget": "LLMCAM_TOKEN_BUDGET",
    "max_context_tokens": "LLMCAM_MAX_CONTEXT_TOKENS",
    "session_ttl_seconds": "LLMCAM_SESSION_TTL_SECONDS", "max_events": "LLMCAM_MAX_EVENTS",
}


def _csv(value: object) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)  # type: ignore[call-overload]


class Settings(BaseModel):
    """Everything configurable; see `from_env` for where the values come from."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL")
    )
    ray_address: str | None = Field(default=None, validation_alias=AliasChoices("RAY_ADDRESS"))
    model: str = "gpt-4o"
    vision_model: str = "gpt-4o"
    data: Path = Path("./llmcam-data")
    db: str | None = None
    yolo_model: str = "yolov8s.pt"
    detector_gpus: float | None = None
    detector_replicas: int = 1
    weathercam_url: str = "https://tie.digitraffic.fi/api/weathercam/v1"
    allow_hosts: list[str] = []
    tool_modules: list[str] = list(BUILTIN_TOOL_MODULES)
    enable_shell: bool = False
    notify_interval: float = 30.0
    # virtual session actors
    idle_seconds: float = 600.0  # an idle session's actor exits after this long; 0 never
    max_live_sessions: int | None = None  # None: sized from the cluster's memory
    # the gateway's own checks
    trusted_hosts: list[str] | None = None  # None: loopback names when listening on loopback
    # bounds on what one session (or a model) can make the system hold
    max_tool_calls: int = 8  # parallel tool calls one model message may ask for
    max_fetch_bytes: int = 20 * 1024 * 1024  # bytes one tool fetch may read
    max_files: int = 500  # files one session may keep
    max_session_bytes: int = 512 * 1024 * 1024  # bytes of files one session may keep
    max_listeners: int = 8  # open /events streams per session
    max_replay: int = 1000  # stored events one /events connection replays at most
    max_spec_bytes: int = 2 * 1024 * 1024  # an OpenAPI document, fetched or expanded
    # who is calling (gateway/identity.py); None: unset, which behaves as "none" but makes
    # `llmcam serve` refuse a non-loopback address
    auth: Literal["none", "proxy", "oidc"] | None = None
    auth_header: str = "X-Forwarded-User"
    trusted_proxies: list[str] = ["127.0.0.1/32", "::1/128"]
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    secret_key: SecretStr | None = None
    # per-user limits, counted across the cluster (API.md "Users, limits and costs")
    rate_sessions: int = 30  # sessions created per minute
    rate_turns: int = 30  # chat turns started per minute
    user_live_sessions: int = 8
    user_listeners: int = 16  # open /events and GET /turn streams
    user_streams: int = 10  # running notification streams
    min_stream_interval: float = 10.0
    stream_hours: float = 24.0
    token_budget: int = 0  # tokens per user and UTC day; 0: none
    max_context_tokens: int = 32000
    session_ttl_seconds: float = 2592000.0
    max_events: int = 10000
    # confirming a tool call
    confirm_tools: list[str] = list(CONFIRM_TOOLS)
    confirm_seconds: float = 120.0
    # Not in the contract: tuning knobs with safe defaults.
    max_rounds: int = 10
    spare_sessions: int = 16  # session actors kept started ahead of new users

    @field_validator("allow_hosts", "tool_modules", "trusted_proxies", "confirm_tools",
                     mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> list[str]:
        return _csv(value)

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _split_csv_or_none(cls, value: object) -> list[str] | None:
        return None if value is None or value == "" else _csv(value)

    @field_validator("data", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # Actors may run with another working directory: hand them an absolute path.
        return value.expanduser().resolve()

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_mode(cls, value: object) -> object:
        return value.strip().lower() or None if isinstance(value, str) else value

    @property
    def llm_configured(self) -> bool:
        """Whether an LLM is named at all (a key for OpenAI's own, or a server's base URL)."""
        return bool(self.openai_api_key or self.openai_base_url)

    def limits(self) -> dict[str, float]:
        """Each per-user limit under its variable's name (what /api/me shows)."""
        return {variable: getattr(self, name) for name, variable in LIMITS.items()}

    @property
    def db_url(self) -> str:
        """The message store: an SQLite path, or a postgresql:// URL."""
        return self.db or str(self.data / "llmcam.sqlite3")

    def worker_env(self) -> dict[str, str]:
        """Environment every Ray worker of ours gets (see `worker_env`)."""
        return worker_env()


def worker_env() -> dict[str, str]:
    """The one place the environment of our Ray workers is written: ultralytics never goes
    online, Ray stays on loopback where it was started there. The gateway hands it to Ray as the
    job's runtime environment; tests and benchmarks that start a Ray of their own use it too."""
    return {
        "YOLO_OFFLINE": "1",
        "YOLO_AUTOINSTALL": "False",
        "YOLO_VERBOSE": "False",
        "ULTRALYTICS_SYNC": "False",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def from_env(**overrides: Any) -> Settings:
    """Read the environment (once, in the gateway). Actors get the resulting plain model, so
    they never import pydantic-settings nor read their own node's environment."""
    from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

    class EnvSettings(BaseSettings, Settings):
        model_config = SettingsConfigDict(env_prefix="LLMCAM_", extra="ignore", frozen=True,
                                          populate_by_name=True)
        # comma-separated in the environment, not JSON
        allow_hosts: Annotated[list[str], NoDecode] = []
        tool_modules: Annotated[list[str], NoDecode] = list(BUILTIN_TOOL_MODULES)
        trusted_hosts: Annotated[list[str] | None, NoDecode] = None
        trusted_proxies: Annotated[list[str], NoDecode] = ["127.0.0.1/32", "::1/128"]
        confirm_tools: Annotated[list[str], NoDecode] = list(CONFIRM_TOOLS)

    return Settings(**EnvSettings(**overrides).model_dump())
