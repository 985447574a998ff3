"""In-process stand-in servers for tests: an OpenAI-compatible chat API, a video host and a
Digitraffic-shaped weather-camera API. Each runs uvicorn in a daemon thread on 127.0.0.1."""

from .digitraffic_server import DigitrafficServer
from .openai_server import Call, Fail, OpenAIServer, Text, ToolCalls
from .video_server import VideoServer

__all__ = [
    "Call",
    "DigitrafficServer",
    "Fail",
    "OpenAIServer",
    "Text",
    "ToolCalls",
    "VideoServer",
]
