"""Every connection a capture makes passes the URL guard, and the session ID never reaches the
model, through real chat turns against the stand-ins.

The allowed video stand-in (127.0.0.1, in the allow-list) serves pages and playlists whose
redirects, meta refreshes, HLS segments, keys and init sections point at a canary on 127.0.0.2:
loopback too, but outside the allow-list. The canary must see no connection at all, and the
model must read a refusal that names no host or port behind it.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from actors.net.guard import UrlGuard
from actors.net.proxy import GuardedProxy
from actors.session.names import session_key
from testing.standins import Call, OpenAIServer, ToolCalls, VideoServer
from tests.conftest import Gateway, make_settings, new_session

CANARY_HOST = "127.0.0.2"


class Canary:
    """A TCP listener that counts every connection it accepts (and answers a bare 404)."""

    def __init__(self) -> None:
        self.sock = socket.create_server((CANARY_HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{CANARY_HOST}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def canary() -> Iterator[Canary]:
    found = Canary()
    yield found
    found.close()


@pytest.fixture(scope="module")
def gateway(ray_address: str, llm: OpenAIServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Only 127.0.0.1 allowed: the stand-ins are reachable, the canary is not."""
    settings = make_settings(tmp_path_factory.mktemp("guard"), llm, allow_hosts=["127.0.0.1"],
                             spare_sessions=1)
    with Gateway(settings, deploy_detector=True) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as c:
        yield c


def turn(client: httpx.Client, sid: str, llm: OpenAIServer, text: str,
         calls: list[Call]) -> list[str]:
    """One chat turn in which the model calls `calls` (at once); the tools' results."""
    llm.script(text, [ToolCalls(calls)])
    response = client.post(f"/api/sessions/{sid}/messages", json={"content": text})
    assert response.status_code == 200, response.text
    return [m["content"] for m in response.json()["messages"] if m["role"] == "tool"]


def assert_refused_quietly(result: str, canary: Canary) -> None:
    assert result.startswith("Error: capture_youtube_live_frame failed: BlockedAddress: refused"),\
        result
    assert "LLMCAM_ALLOW_HOSTS" in result
    assert CANARY_HOST not in result and str(canary.port) not in result


def test_yt_dlp_redirects_and_refreshes_pass_the_guard(client: httpx.Client,
                                                      fresh_llm: OpenAIServer,
                                                      video: VideoServer, canary: Canary) -> None:
    """The page yt-dlp reads redirects (HTTP 302, to http and to https) or refreshes (<meta>)
    to the canary."""
    sid = new_session(client)
    secure = canary.url.replace("http://", "https://")
    results = turn(client, sid, fresh_llm, "capture the moved cameras", [
        Call("capture_youtube_live_frame", {"link": video.redirect_url(canary.url + "/a.mp4")}),
        Call("capture_youtube_live_frame", {"link": video.redirect_url(secure + "/b.m3u8")}),
        Call("capture_youtube_live_frame", {"link": video.refresh_url(canary.url + "/c.mp4")}),
    ])
    assert canary.connections == 0
    for result in results:
        assert_refused_quietly(result, canary)
    assert client.get(f"/api/sessions/{sid}/files").json() == []


def test_ffmpeg_redirects_segments_keys_and_maps_pass_the_guard(
        client: httpx.Client, fresh_llm: OpenAIServer, video: VideoServer,
        canary: Canary) -> None:
    """yt-dlp lists a format on the allowed host; what OpenCV's ffmpeg then fetches (the
    format's redirect, an HLS playlist's segments, its AES key, its init section) is on the
    canary."""
    sid = new_session(client)
    results = turn(client, sid, fresh_llm, "capture the tricky streams", [
        Call("capture_youtube_live_frame",
             {"link": video.video_page_url(video.redirect_url(canary.url + "/d.mp4"))}),
        Call("capture_youtube_live_frame",
             {"link": video.remote_playlist_url("segments", canary.url)}),
        Call("capture_youtube_live_frame", {"link": video.remote_playlist_url("key", canary.url)}),
        Call("capture_youtube_live_frame", {"link": video.remote_playlist_url("map", canary.url)}),
    ])
    assert canary.connections == 0
    for result in results:
        assert_refused_quietly(result, canary)
    assert client.get(f"/api/sessions/{sid}/files").json() == []
    # the guard stops only what it must: the same kind of stream, all on the allowed host
    [ok] = turn(client, sid, fresh_llm, "capture the good one", [
        Call("capture_youtube_live_frame", {"link": video.video_page_url(video.mp4_url)})])
    assert "saved it as cap_" in ok, ok


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


def test_session_id_never_reaches_the_llm_server(client: httpx.Client, fresh_llm: OpenAIServer,
                                                 video: VideoServer) -> None:
    """After a capture, a detection, a vision question and a listing, nothing the LLM server
    received holds the session ID or its key; the model names files, relative to the session."""
    sid = new_session(client)
    [captured] = turn(client, sid, fresh_llm, "capture the harbour", [
        Call("capture_youtube_live_frame", {"link": video.mp4_url, "place": "harbour"})])
    name = captured.split("saved it as ", 1)[1].split(". ", 1)[0]
    results = turn(client, sid, fresh_llm, "look at it", [
        Call("detect_objects", {"image_path": name}),
        Call("ask_gpt4v_about_image_file", {"path": name}),
        Call("list_image_files", {}),
        Call("list_detection_files", {}),
    ])
    detection = json.loads(results[0])
    reply = client.post(f"/api/sessions/{sid}/messages", json={"content": "thanks"})
    assert reply.status_code == 200
    sent = json.dumps(fresh_llm.requests)
    assert name in sent and detection["file"] in sent  # the log holds this session's turns
    assert sid not in sent and session_key(sid) not in sent
    # results name files, with links relative to the session, which the page resolves
    assert f"![{name}](files/{name})" in captured
    assert detection["show"] == f"![{detection['file']}](files/{detection['file']})"
    assert f"{name} (files/{name})" in results[2]
    assert client.get(f"/api/sessions/{sid}/files/{name}").status_code == 200
