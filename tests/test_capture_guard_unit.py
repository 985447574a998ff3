"""The guarded proxy by itself: open and closed ports told apart only where the guard allows
(tests/test_capture_guard.py sends yt-dlp and ffmpeg through it in a session)."""

from __future__ import annotations

import socket

import httpx
import pytest

from actors.net.guard import UrlGuard
from actors.net.proxy import GuardedProxy
from testing.standins import VideoServer
from tests.helpers import CANARY_HOST, Canary, serving

canary = serving(Canary)


def closed_port(host: str) -> int:
    with socket.create_server((host, 0)) as sock:
        return sock.getsockname()[1]


def test_proxy_tells_open_from_closed_ports_only_where_allowed(video: VideoServer,
                                                              canary: Canary) -> None:
    """The capture proxy answers an address outside the allow-list the same way whether a
    server listens there or not, without connecting: a probe learns nothing about it."""
    with GuardedProxy(UrlGuard(["127.0.0.1"]), timeout=5) as proxy, \
            httpx.Client(proxy=proxy.url, timeout=10) as web:
        assert web.get(video.mp4_url).content[4:8] == b"ftyp"  # allowed: the MP4 itself
        answers = [web.get(f"http://{CANARY_HOST}:{port}/") for port in
                   (canary.port, closed_port(CANARY_HOST))]
        assert {(a.status_code, a.text) for a in answers} == {(403,
                                                               "refused: address not allowed\n")}
        with pytest.raises(httpx.ProxyError, match="403"):
            web.get(f"https://{CANARY_HOST}:{canary.port}/")  # CONNECT, as for https
        assert proxy.refused == 3 and canary.connections == 0
        gone = web.get(f"http://127.0.0.1:{closed_port('127.0.0.1')}/")
        assert (gone.status_code, gone.text) == (502, "the server did not answer\n")
