"""Every connection a capture makes passes the URL guard, and the session ID never reaches the
model, through real chat turns against the stand-ins.

The allowed video stand-in (127.0.0.1, in the allow-list) serves pages and playlists whose
redirects, meta refreshes, HLS segments, keys and init sections point at a canary on 127.0.0.2:
loopback too, but outside the allow-list. The canary must see no connection at all, and the
model must read a refusal that names no host or port behind it.
"""

from __future__ import annotations

import json

import httpx

from actors.session.names import session_key
from testing.standins import Call, OpenAIServer, VideoServer
from tests.helpers import CANARY_HOST, Canary, new_session, serving, turn

GATEWAY = "tools"  # conftest: the tool tests' gateway


canary = serving(Canary)


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
