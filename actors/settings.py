"""The one place configuration is read from the environment.

The gateway builds a `Settings` once and hands it to every actor and deployment it creates: on a
cluster an actor runs in its node's environment, not the gateway's: nothing else reads the env.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

BUILTIN_TOOL_MODULES = ("actors.tools.camera", "actors.tools.vision", "actors.tools.files")


def _csv(value: object) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)  # type: ignore[call-overload]


class Settings(BaseModel):
    """Everything configurable; see `from_env` for where the values come from."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    openai_api_key: str | None = Field(
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
    # Not in the contract: tuning knobs with safe defaults.
    max_rounds: int = 10
    spare_sessions: int = 16  # session actors kept started ahead of new users

    @field_validator("allow_hosts", "tool_modules", mode="before")
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

    @property
    def db_url(self) -> str:
        """The message store: an SQLite path, or a postgresql:// URL."""
        return self.db or str(self.data / "llmcam.sqlite3")

    def worker_env(self) -> dict[str, str]:
        """Environment every Ray worker of ours gets (ultralytics must never go online)."""
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

    return Settings(**EnvSettings(**overrides).model_dump())
