"""Camera tools through real chat turns: live-stream captures (yt-dlp + OpenCV in Ray tasks) and
the Digitraffic weather cameras, against the stand-ins; bad links and dead servers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import cv2
import httpx
import numpy as np
import pytest

from testing.standins import Call, DigitrafficServer, OpenAIServer, VideoServer
from testing.standins.video_server import BACKGROUND_BGR
from tests.helpers import Gateways, new_session, turn

GATEWAY = "tools"  # conftest: the tool tests' gateway

SAVED = re.compile(r"saved it as (\S+?)\. Show it with !\[\S+\]\((files/\S+)\)")


@pytest.fixture(scope="module")
def sid(client: httpx.Client) -> str:
    return new_session(client)


def saved(result: str) -> tuple[str, str]:
    match = SAVED.search(result)
    assert match, result
    return match[1], match[2]


def image(client: httpx.Client, url: str) -> np.ndarray:
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    decoded = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    return decoded


def background_is(frame: np.ndarray, height: int) -> bool:
    """The stand-in video's background colour for its `height` rendition (top-left corner)."""
    corner = frame[2:6, 2:6].reshape(-1, 3).mean(0)
    return bool(np.abs(corner - np.array(BACKGROUND_BGR[height])).max() < 40)


def test_select_youtube_live_url(client: httpx.Client, sid: str, fresh_llm: OpenAIServer) -> None:
    results = turn(client, sid, fresh_llm, "which live cameras?", [
        Call("select_youtube_live_url", {"location": "Santa Claus Village"}),
        Call("select_youtube_live_url", {"location": "a parking lot", "provider": "YouTube"}),
        Call("select_youtube_live_url", {"location": "Helsinki harbour"}),
    ])
    assert results == ["https://www.youtube.com/watch?v=Cp4RRAEgpeU",
                       "https://www.youtube.com/watch?v=mwN6l3O1MNI",
                       "https://www.youtube.com/watch?v=LMZQ7eFhm58"]


def test_capture_takes_best_format_up_to_720p(client: httpx.Client, sid: str,
                                               fresh_llm: OpenAIServer,
                                               video: VideoServer) -> None:
    results = turn(client, sid, fresh_llm, "capture all the streams", [
        Call("capture_youtube_live_frame", {"link": video.mp4_url, "place": "direct"}),
        Call("capture_youtube_live_frame", {"link": video.hls_url, "place": "hls"}),
        # formats: a labelled 360p and an unlabelled one that turns out to be 1080p
        Call("capture_youtube_live_frame", {"link": video.page_url, "place": "page"}),
        # only a 1080p file: taken, and stored downscaled
        Call("capture_youtube_live_frame", {"link": video.mp4_url_for(1080), "place": "big"}),
    ])
    frames = {place: image(client, f"/api/sessions/{sid}/{saved(result)[1]}")
              for place, result in zip(["direct", "hls", "page", "big"], results, strict=True)}
    assert frames["direct"].shape == (720, 1280, 3) and background_is(frames["direct"], 720)
    assert frames["hls"].shape == (720, 1280, 3) and background_is(frames["hls"], 720)
    assert frames["page"].shape == (360, 640, 3) and background_is(frames["page"], 360)
    assert frames["big"].shape == (720, 1280, 3) and background_is(frames["big"], 1080)
    assert "downscaled from 1920x1080" in results[3]
    listed = client.get(f"/api/sessions/{sid}/files").json()
    names = {saved(r)[0] for r in results}
    assert names <= {f["name"] for f in listed if f["kind"] == "capture"}
    assert all(n.startswith("cap_") and n.endswith(".jpg") for n in names)
    # the model was told how to show each one
    assert all(f"![{saved(r)[0]}](files/{saved(r)[0]})" in r for r in results)


def test_capture_bad_links_answer_clearly(client: httpx.Client, sid: str,
                                          fresh_llm: OpenAIServer, video: VideoServer) -> None:
    results = turn(client, sid, fresh_llm, "capture the broken ones", [
        Call("capture_youtube_live_frame", {"link": video.not_a_video_url}),
        Call("capture_youtube_live_frame", {"link": video.no_video_page_url}),
        Call("capture_youtube_live_frame", {}),  # the default stream: no internet here
        Call("capture_youtube_live_frame", {"link": "file:///etc/passwd"}),
    ])
    assert all(r.startswith("Error: capture_youtube_live_frame failed:") for r in results)
    assert "could not read a video frame" in results[0]
    assert "yt-dlp could not find a video stream" in results[1] and "Unsupported URL" in results[1]
    assert "www.youtube.com" in results[2]
    assert "only http(s) URLs" in results[3]
    # the session goes on
    reply = client.post(f"/api/sessions/{sid}/messages", json={"content": "still there?"})
    assert reply.json()["reply"] == "echo: still there?"


def test_dead_servers_time_out(client: httpx.Client, sid: str, fresh_llm: OpenAIServer,
                               digitraffic: DigitrafficServer, video: VideoServer) -> None:
    """A stream server and a camera service that accept and never answer: bounded waits."""
    before = client.get(f"/api/sessions/{sid}/files").json()
    digitraffic.down, digitraffic.hang_seconds = True, 60
    try:
        results = turn(client, sid, fresh_llm, "capture from the dead", [
            Call("capture_youtube_live_frame", {"link": video.slow_url}),
            Call("cap", {"key": "Porvoo"}),
        ])
    finally:
        digitraffic.reset()
    assert results[0].startswith("Error: capture_youtube_live_frame failed: StreamError:")
    assert "timed out" in results[0]
    assert results[1].startswith("Error: cap failed: TimeoutError:")
    assert "did not answer within" in results[1]
    assert client.get(f"/api/sessions/{sid}/files").json() == before


def test_camera_address_book(client: httpx.Client, sid: str, fresh_llm: OpenAIServer,
                             digitraffic: DigitrafficServer) -> None:
    digitraffic.reset()
    [result] = turn(client, sid, fresh_llm, "where are the cameras?",
                    [Call("camera_address_book", {})])
    book = json.loads(result)
    cameras = {e["camera"]: (e["address"], e["url"]) for e in book["entries"]}
    assert book["cameras"] == len(book["entries"]) == 10  # every preset of every station
    assert cameras["C0150301"] == ("Harabacka, Tie 1 Porvoo, Harabacka, Porvoo, Uusimaa",
                                   digitraffic.image_url("C0150301"))
    assert cameras["C0166902"] == ("Konala, Kehä I Helsinki, Konala, Helsinki, Uusimaa",
                                   digitraffic.image_url("C0166902"))
    requests = digitraffic.requests
    assert requests and all(r.headers.get("digitraffic-user") == "llmcam/0.1" for r in requests)
    assert {r.path for r in requests} >= {"/api/weathercam/v1/stations",
                                          "/api/weathercam/v1/stations/C01503"}


def test_cap_saves_the_current_image(client: httpx.Client, sid: str, fresh_llm: OpenAIServer,
                                     digitraffic: DigitrafficServer) -> None:
    digitraffic.reset()
    results = turn(client, sid, fresh_llm, "show me Porvoo and Konala", [
        Call("cap", {}), Call("cap", {"key": "helsinki konala"})])
    name, url = saved(results[0])
    assert "Harabacka_C0150301" in name and "Porvoo" in results[0]
    frame = image(client, f"/api/sessions/{sid}/{url}")
    assert frame.shape == (720, 1280, 3)
    assert "Konala_C0166901" in saved(results[1])[0]
    images = [r for r in digitraffic.requests if r.path.startswith("/images/")]
    assert images and all(r.headers["digitraffic-user"] == "llmcam/0.1" for r in images)


def test_cap_unknown_place_lists_known_ones(client: httpx.Client, sid: str,
                                            fresh_llm: OpenAIServer) -> None:
    [result] = turn(client, sid, fresh_llm, "show me Atlantis", [Call("cap", {"key": "Atlantis"})])
    assert result.startswith("No weather camera matches 'Atlantis'")
    assert "Tie 1 Porvoo, Harabacka" in result and "Tie 4 Oulu, Kaakkuri" in result


def test_cap_broken_image_is_refused(client: httpx.Client, sid: str, fresh_llm: OpenAIServer,
                                     digitraffic: DigitrafficServer) -> None:
    before = client.get(f"/api/sessions/{sid}/files").json()
    digitraffic.broken_image = True
    try:
        [result] = turn(client, sid, fresh_llm, "capture a broken camera", [Call("cap", {})])
    finally:
        digitraffic.reset()
    assert result.startswith("Error: cap failed: NotAnImage: the data is not an image")
    assert client.get(f"/api/sessions/{sid}/files").json() == before


@pytest.fixture(scope="module")
def strict(gateways: Gateways, digitraffic: DigitrafficServer) -> Iterator[httpx.Client]:
    """The default guard: loopback refused for links and URLs from the model; the operator's
    weather-camera service (and its own host) stays trusted."""
    with gateways(weathercam_url=digitraffic.base_url, spare_sessions=1).client() as c:
        yield c


def test_private_addresses_are_refused(strict: httpx.Client, fresh_llm: OpenAIServer,
                                       video: VideoServer,
                                       digitraffic: DigitrafficServer) -> None:
    digitraffic.reset()
    sid = new_session(strict)
    results = turn(strict, sid, fresh_llm, "capture from loopback", [
        Call("capture_youtube_live_frame", {"link": video.mp4_url}),
        Call("capture_youtube_live_frame", {"link": "http://169.254.169.254/latest/"}),
        Call("ask_gpt4v_about_image_file", {"path": digitraffic.image_url("C0150301")}),
        Call("detect_objects", {"image_path": digitraffic.image_url("C0150301")}),
        Call("cap", {"key": "Porvoo"}),
    ])
    for result in results[:4]:
        assert "BlockedAddress: refused" in result, result
        assert "LLMCAM_ALLOW_HOSTS" in result
    assert "saved it as cap_" in results[4]  # the configured camera service is trusted
    assert not [r for r in fresh_llm.requests if r.get("model") == "test-vision"]
    assert len([f for f in strict.get(f"/api/sessions/{sid}/files").json()]) == 1
